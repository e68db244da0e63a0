local consumer, n, ttl, client_now = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local liveness, block = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local taken, dropped = {}, {}
-- Asking for work is taking work: this consumer is alive (again), and stays alive while
-- it waits for work (`block` ms), as if seen at the end of its wait.
redis.call('HSET', SEEN, consumer, now + block)
local function alive(replica)
  local seen = tonumber(redis.call('HGET', SEEN, replica) or '0') or 0
  return seen > 0 and now - seen < liveness
end
local function take(job, entry, flat, stream)
  local f = fields_of(flat)
  local meta = meta_key(job)
  if f['dl'] and f['dl'] ~= '' and client_now > tonumber(f['dl']) then
    local epoch = redis.call('HGET', meta, 'epoch') or '1'
    forget(job, entry, stream)
    dropped[#dropped + 1] = {job, epoch}
    return
  end
  local deliveries = redis.call('HINCRBY', meta, 'deliveries', 1)
  if not redis.call('HGET', meta, 'epoch') then redis.call('HSET', meta, 'epoch', 1) end
  redis.call('HSET', meta, 'entry', entry, 'state', 'leased', 'consumer', consumer, 'expires', now + ttl)
  redis.call('ZADD', KEYS[3], now + ttl, job)
  taken[#taken + 1] = {job, f['job'], redis.call('HGET', meta, 'epoch'), deliveries}
end
-- Take the jobs of a list of pending entries (requeued, or parked or freed ones of
-- `level`), head first.
local function take_listed(list, level)
  while #taken < n do
    local job = redis.call('LPOP', list)
    if not job then break end
    local meta = meta_key(job)
    if level then redis.call('ZREM', parked_set(level), job) end
    redis.call('HDEL', meta, 'parked')
    local entry = redis.call('HGET', meta, 'entry')
    if entry then
      local stream = stream_of(job)
      local claimed = {}
      if redis.call('EXISTS', stream) == 1 then
        claimed = redis.call('XCLAIM', stream, ARGV[2], consumer, 0, entry)
      end
      if claimed[1] then take(job, entry, claimed[1][2], stream) else forget(job, entry, stream) end
    end
  end
end
-- A parked job whose promise ended goes to its priority's free list.
local function free(job)
  local meta = meta_key(job)
  local m = redis.call('HMGET', meta, 'parked', 'level')
  local level = m[2] or 'normal'
  if m[1] then redis.call('LREM', parked_list(m[1], level), 0, job) end
  redis.call('HDEL', meta, 'parked')
  redis.call('ZREM', parked_set(level), job)
  redis.call('RPUSH', free_of_level[level], job)
end
-- Promises past their end.
for _, level in ipairs(levels) do
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', parked_set(level), '-inf', now)) do free(job) end
end
-- Promises to consumers gone quiet or no longer taking work; consumers long gone and
-- holding nothing are forgotten.
local seen = redis.call('HGETALL', SEEN)
for i = 1, #seen, 2 do
  local replica, at = seen[i], tonumber(seen[i + 1]) or 0
  if replica ~= consumer and not alive(replica) then
    for _, level in ipairs(levels) do
      for _, job in ipairs(redis.call('LRANGE', parked_list(replica, level), 0, -1)) do free(job) end
    end
    if at > 0 and now - at > 10 * liveness then redis.call('HDEL', SEEN, replica) end
  end
end
take_listed(KEYS[2])
for rank, stream in ipairs(streams) do
  local level = levels[rank]
  -- Within a priority: the jobs promised to this consumer, then the freed ones (both
  -- older than any new entry), then new entries, parking those promised to another
  -- live consumer.
  take_listed(parked_list(consumer, level), level)
  take_listed(free_of_level[level], level)
  if redis.call('EXISTS', stream) == 1 then
    while #taken < n do
      local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], consumer, 'COUNT', n - #taken, 'STREAMS', stream, '>')
      if not reply or #reply[1][2] == 0 then break end
      for _, e in ipairs(reply[1][2]) do
        local f = fields_of(e[2])
        local replica, ends = f['rr'], tonumber(f['ru'] or '0') or 0
        if replica and replica ~= consumer and ends > now and alive(replica) then
          redis.call('RPUSH', parked_list(replica, level), f['id'])
          redis.call('ZADD', parked_set(level), ends, f['id'])
          redis.call('HSET', meta_key(f['id']), 'parked', replica)
        else
          take(f['id'], e[1], e[2], stream)
        end
      end
    end
  end
end
local wake_id = '0-0'
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if last[1] then wake_id = last[1][1] end
-- When the next promise ends (ms from now; nil: none parked), so a waiting consumer
-- looks again then.
local next_end = false
for _, level in ipairs(levels) do
  local first = redis.call('ZRANGE', parked_set(level), 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(0, tonumber(first[2]) - now)
    if not next_end or wait < next_end then next_end = wait end
  end
end
return {taken, dropped, wake_id, next_end}
