local consumer, n, ttl, client_now = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local liveness, block, mark_seen = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local now = now_ms()
local taken, dropped = {}, {}
-- Taken or dropped per priority, out of its waiting count (`COUNT`).
local gone = {high = 0, normal = 0, low = 0}
-- Asking for work is taking work: this consumer is alive (again). The caller asks for
-- the mark (`mark_seen`) often enough for it to stay alive while it takes work without
-- waiting; a take that finds nothing marks it alive until the end of its wait (`block`
-- ms), as if seen then.
if mark_seen then redis.call('HSET', SEEN, consumer, now + block) end
-- When the others were seen: read only when needed (parked or routed jobs, or a take
-- that found nothing and tidies up).
local seen, seen_at
local function load_seen()
  if not seen then
    seen, seen_at = redis.call('HGETALL', SEEN), {}
    for i = 1, #seen, 2 do seen_at[seen[i]] = tonumber(seen[i + 1]) or 0 end
  end
end
local function alive(replica)
  load_seen()
  local at = seen_at[replica] or 0
  return at > 0 and now - at < liveness
end
-- `new`: a new entry (`XREADGROUP`), whose epoch is still the enqueue's 1 (release and
-- reclaim, which raise it, requeue the job instead).
local function take(job, entry, flat, stream, new)
  local f = fields_of(flat)
  local meta = meta_key(job)
  if f['dl'] and f['dl'] ~= '' and client_now > tonumber(f['dl']) then
    local epoch = redis.call('HGET', meta, 'epoch') or '1'
    forget(job, entry, stream, false)
    dropped[#dropped + 1] = {job, epoch}
    return
  end
  -- A new entry's first delivery (enqueue set 0); a requeued one's next.
  local deliveries = new and 1 or redis.call('HINCRBY', meta, 'deliveries', 1)
  local epoch = new and '1' or redis.call('HGET', meta, 'epoch') or '1'
  redis.call('HSET', meta, 'entry', entry, 'state', 'leased', 'consumer', consumer, 'expires', now + ttl,
    'epoch', epoch, 'deliveries', deliveries)
  redis.call('ZADD', KEYS[3], now + ttl, job)
  taken[#taken + 1] = {job, f['job'], epoch, deliveries}
end
-- Take the jobs of a list of pending entries (requeued, or parked or freed ones of
-- `level`, which count in its waiting count), head first.
local popped = 0
local function take_listed(list, level)
  while #taken < n do
    local job = redis.call('LPOP', list)
    if not job then break end
    if not level then popped = popped + 1 end
    local meta = meta_key(job)
    if level then
      redis.call('ZREM', parked_set(level), job)
      gone[level] = gone[level] + 1
    end
    redis.call('HDEL', meta, 'parked')
    local entry = redis.call('HGET', meta, 'entry')
    if entry then
      local stream = stream_of(job)
      local claimed = {}
      if redis.call('EXISTS', stream) == 1 then
        claimed = redis.call('XCLAIM', stream, ARGV[2], consumer, 0, entry)
      end
      if claimed[1] then take(job, entry, claimed[1][2], stream) else forget(job, entry, stream, false) end
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
-- Promises to consumers gone quiet or no longer taking work are freed (with
-- `free_promises`); consumers long gone and holding nothing are forgotten.
local function tidy(free_promises)
  load_seen()
  for i = 1, #seen, 2 do
    local replica, at = seen[i], seen_at[seen[i]]
    if replica ~= consumer and not alive(replica) then
      if free_promises then
        for _, level in ipairs(levels) do
          for _, job in ipairs(redis.call('LRANGE', parked_list(replica, level), 0, -1)) do free(job) end
        end
      end
      if at > 0 and now - at > 10 * liveness then redis.call('HDEL', SEEN, replica) end
    end
  end
end
local count = counts()
-- A parked job is in its consumer's list and in its priority's set: without any set or
-- free list, there is no promise to look at, no freed job to take, and every waiting job
-- counted is an undelivered entry of its priority's stream. Looked at only while the
-- counts say some may be there.
local parked = false
if count.parked then
  parked = redis.call('EXISTS', parked_set('high'), parked_set('normal'), parked_set('low'), KEYS[10],
    KEYS[11], KEYS[12]) > 0
  if not parked then redis.call('HDEL', COUNT, 'p') end
end
if parked then
  -- Promises past their end.
  for _, level in ipairs(levels) do
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', parked_set(level), '-inf', now)) do free(job) end
  end
end
if parked then tidy(true) end
if count.requeued > 0 then
  take_listed(KEYS[2])
  if popped > 0 then redis.call('HINCRBY', COUNT, 'r', -popped) end
end
for rank, stream in ipairs(streams) do
  local level = levels[rank]
  -- Within a priority: the jobs promised to this consumer, then the freed ones (both
  -- older than any new entry), then new entries, parking those promised to another
  -- live consumer. A priority with nothing waiting is skipped.
  if #taken < n and count[level] > 0 then
    if parked then
      take_listed(parked_list(consumer, level), level)
      take_listed(free_of_level[level], level)
    end
    if #taken < n and (not parked or redis.call('EXISTS', stream) == 1) then
      while #taken < n do
        local want = n - #taken
        -- (An error, such as a stream gone with its group, reads as nothing: `depth`
        -- sets the counts right. A stream without its group, as one deleted by hand
        -- and made again by an enqueue, gets it back, from its first entry.)
        local reply = redis.pcall('XREADGROUP', 'GROUP', ARGV[2], consumer, 'COUNT', want, 'STREAMS', stream, '>')
        if type(reply) == 'table' and reply.err and string.find(reply.err, 'NOGROUP', 1, true) then
          redis.pcall('XGROUP', 'CREATE', stream, ARGV[2], '0', 'MKSTREAM')
          reply = redis.pcall('XREADGROUP', 'GROUP', ARGV[2], consumer, 'COUNT', want, 'STREAMS', stream, '>')
        end
        if type(reply) ~= 'table' or reply.err or not reply[1] or #reply[1][2] == 0 then break end
        for _, e in ipairs(reply[1][2]) do
          local f = fields_of(e[2])
          local replica, ends = f['rr'], tonumber(f['ru'] or '0') or 0
          if replica and replica ~= consumer and ends > now and alive(replica) then
            redis.call('RPUSH', parked_list(replica, level), f['id'])
            redis.call('ZADD', parked_set(level), ends, f['id'])
            redis.call('HSET', meta_key(f['id']), 'parked', replica)
            if not parked then redis.call('HSET', COUNT, 'p', 1) end
            parked = true
          else
            gone[level] = gone[level] + 1
            take(f['id'], e[1], e[2], stream, true)
          end
        end
        -- Fewer than asked for: the stream has nothing more.
        if #reply[1][2] < want then break end
      end
    end
  end
end
for _, level in ipairs(levels) do uncount(level, gone[level]) end
-- Only a consumer that took nothing waits for the wake-up stream; it says so
-- (`asleep`), so that the next enqueue appends to that stream (an enqueue while every
-- consumer is busy does not). It also tidies the consumers seen.
local wake_id = ''
if #taken == 0 then
  wake_id = '0-0'
  if WAKES_HERE then
    local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
    if last[1] then wake_id = last[1][1] end
  end
  if block > 0 then
    redis.call('HSET', COUNT, 'asleep', 1)
    if not mark_seen then redis.call('HSET', SEEN, consumer, now + block) end
  end
  if not parked then tidy(false) end
end
-- When the next promise ends (ms from now; nil: none parked), so a waiting consumer
-- looks again then.
local next_end = false
if parked then
  for _, level in ipairs(levels) do
    local first = redis.call('ZRANGE', parked_set(level), 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = math.max(0, tonumber(first[2]) - now)
      if not next_end or wait < next_end then next_end = wait end
    end
  end
end
return {taken, dropped, wake_id, next_end}
