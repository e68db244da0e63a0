local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function meta_key(job) return ARGV[1] .. job end
-- Consumers wait on partition 0's wake-up stream only: a partition k > 0 (tag
-- `{dep:NAME#k}`) leaves waking to its caller, which appends to partition 0's.
local WAKES_HERE = not string.find(KEYS[4], '#%d+}:wake$')
local function wake()
  if WAKES_HERE then redis.call('XADD', KEYS[4], 'MAXLEN', '16', '*', 'w', '1') end
end
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
  -- (No consumer group yet: nothing was delivered.)
  local pending = redis.pcall('XPENDING', stream, ARGV[2])
  if type(pending) ~= 'table' or pending.err then pending = {0} end
  return redis.call('XLEN', stream) - tonumber(pending[1])
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
-- `KEYS[13]`: the waiting jobs of each priority outside the requeued list (undelivered,
-- parked and freed ones), kept by every script that moves a job, so admission, enqueue
-- positions and `take` read three numbers instead of walking the streams. `v` marks
-- them as kept; a deployment without it (older versions) is counted once by walking.
local COUNT = KEYS[13]
local function exact_count(level)
  return undelivered_in(stream_of_level[level]) + set_aside(level)
end
-- Also `r`: the length of the requeued list; `asleep`: whether a consumer that found
-- nothing may be waiting on the wake-up stream; `p`: whether jobs may be parked or
-- freed (set when one is parked, cleared by a take that finds none); `g:<level>`:
-- the consumer group of that priority's stream exists (created by its first enqueue).
local function counts()
  local c = redis.call('HMGET', COUNT, 'high', 'normal', 'low', 'v', 'asleep', 'r', 'p', 'g:high', 'g:normal', 'g:low')
  local kept
  if not c[4] then
    kept = {}
    for _, level in ipairs(levels) do kept[level] = exact_count(level) end
    kept.requeued = redis.call('LLEN', KEYS[2])
    redis.call('HSET', COUNT, 'high', kept.high, 'normal', kept.normal, 'low', kept.low, 'v', 1, 'r', kept.requeued, 'p', 1)
    kept.parked = true
  else
    kept = {high = math.max(0, tonumber(c[1]) or 0), normal = math.max(0, tonumber(c[2]) or 0),
      low = math.max(0, tonumber(c[3]) or 0), parked = c[7] == '1'}
    if c[6] then
      kept.requeued = math.max(0, tonumber(c[6]) or 0)
    else
      kept.requeued = redis.call('LLEN', KEYS[2])
      redis.call('HSET', COUNT, 'r', kept.requeued)
    end
  end
  kept.asleep = c[5] == '1'
  kept.group = {high = c[8] == '1', normal = c[9] == '1', low = c[10] == '1'}
  return kept
end
local function uncount(level, n)
  if n > 0 then redis.call('HINCRBY', COUNT, level, -n) end
end
-- Hand job back to the head of the requeued list.
local function requeue(job)
  redis.call('LPUSH', KEYS[2], job)
  redis.call('HINCRBY', COUNT, 'r', 1)
end
-- Acknowledge and delete a job's entry (in `stream`, by default the job's own) and
-- every index of it. `counted`: whether it counts in its priority's waiting count
-- (`COUNT`); nil: find out (waiting, and not in the requeued list).
local function forget(job, entry, stream, counted)
  local m = redis.call('HMGET', meta_key(job), 'parked', 'level', 'state')
  local level = (m[2] and stream_of_level[m[2]]) and m[2] or 'normal'
  stream = stream or stream_of_level[level]
  if entry then
    redis.call('XACK', stream, ARGV[2], entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('ZREM', KEYS[3], job)
  local requeued = redis.call('LREM', KEYS[2], 0, job)
  if requeued > 0 then redis.call('HINCRBY', COUNT, 'r', -requeued) end
  if m[1] then redis.call('LREM', parked_list(m[1], level), 0, job) end
  redis.call('LREM', free_of_level[level], 0, job)
  redis.call('ZREM', parked_set(level), job)
  if counted == nil then counted = m[3] == 'waiting' and requeued == 0 end
  if counted then uncount(level, 1) end
  redis.call('DEL', meta_key(job))
end
-- Forget a job this consumer holds (`m`: its lease hash's state, consumer, epoch, entry
-- and level): a leased job is in no list, so only its entry, lease and hash go.
local function forget_leased(job, m)
  local stream = stream_of_level[m[5] or 'normal'] or KEYS[1]
  if m[4] then
    redis.call('XACK', stream, ARGV[2], m[4])
    redis.call('XDEL', stream, m[4])
  end
  redis.call('ZREM', KEYS[3], job)
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
