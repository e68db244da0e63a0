local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function meta_key(job) return ARGV[1] .. job end
local function wake() redis.call('XADD', KEYS[4], 'MAXLEN', '16', '*', 'w', '1') end
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
-- The work streams in service order, and by priority name.
local streams = {KEYS[6], KEYS[1], KEYS[7]}
local stream_of_level = {high = KEYS[6], normal = KEYS[1], low = KEYS[7]}
local rank_of_level = {high = 1, normal = 2, low = 3}
local function level_of(job)
  local level = redis.call('HGET', meta_key(job), 'level')
  if level and stream_of_level[level] then return level end
  return 'normal'
end
local function stream_of(job) return stream_of_level[level_of(job)] end
local function undelivered_in(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local pending = redis.call('XPENDING', stream, ARGV[2])
  return redis.call('XLEN', stream) - tonumber(pending[1])
end
local function undelivered()
  local n = 0
  for _, stream in ipairs(streams) do n = n + undelivered_in(stream) end
  return n
end
-- Routed jobs (see `routing` in the module docs): KEYS[8] when each consumer was last
-- seen (server ms; '0': it stopped taking work), KEYS[10..12] the freed jobs per
-- priority. Parked jobs are in `KEYS[9]:<level>` (zset by promise end) and in their
-- consumer's list `KEYS[9]:<consumer>:<level>` (keys of the same hash tag).
local SEEN, PARKED = KEYS[8], KEYS[9]
local levels = {'high', 'normal', 'low'}
local free_of_level = {high = KEYS[10], normal = KEYS[11], low = KEYS[12]}
local function parked_list(replica, level) return PARKED .. ':' .. replica .. ':' .. level end
local function parked_set(level) return PARKED .. ':' .. level end
-- Jobs of `level` passed over or freed: all older than its undelivered entries.
local function set_aside(level)
  return redis.call('ZCARD', parked_set(level)) + redis.call('LLEN', free_of_level[level])
end
local function waiting()
  local n = undelivered() + redis.call('LLEN', KEYS[2])
  for _, level in ipairs(levels) do n = n + set_aside(level) end
  return n
end
-- Acknowledge and delete a job's entry (in `stream`, by default the job's own) and
-- every index of it.
local function forget(job, entry, stream)
  stream = stream or stream_of(job)
  if entry and redis.call('EXISTS', stream) == 1 then
    redis.call('XACK', stream, ARGV[2], entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('ZREM', KEYS[3], job)
  redis.call('LREM', KEYS[2], 0, job)
  local m = redis.call('HMGET', meta_key(job), 'parked', 'level')
  local level = m[2] or 'normal'
  if m[1] then redis.call('LREM', parked_list(m[1], level), 0, job) end
  if free_of_level[level] then
    redis.call('LREM', free_of_level[level], 0, job)
    redis.call('ZREM', parked_set(level), job)
  end
  redis.call('DEL', meta_key(job))
end
local function last_delivered(stream)
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(groups) do
    local f = fields_of(g)
    if f['name'] == ARGV[2] then return f['last-delivered-id'] end
  end
  return '0-0'
end
local function holds(m, consumer, epoch)
  return m[1] == 'leased' and m[2] == consumer and m[3] == epoch
end
