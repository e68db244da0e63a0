local consumer, n, ttl, client_now = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local taken, dropped = {}, {}
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
while #taken < n do
  local job = redis.call('LPOP', KEYS[2])
  if not job then break end
  local entry = redis.call('HGET', meta_key(job), 'entry')
  if entry then
    local stream = stream_of(job)
    local claimed = {}
    if redis.call('EXISTS', stream) == 1 then
      claimed = redis.call('XCLAIM', stream, ARGV[2], consumer, 0, entry)
    end
    if claimed[1] then take(job, entry, claimed[1][2], stream) else forget(job, entry, stream) end
  end
end
for _, stream in ipairs(streams) do
  if redis.call('EXISTS', stream) == 1 then
    while #taken < n do
      local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], consumer, 'COUNT', n - #taken, 'STREAMS', stream, '>')
      if not reply or #reply[1][2] == 0 then break end
      for _, e in ipairs(reply[1][2]) do
        take(fields_of(e[2])['id'], e[1], e[2], stream)
      end
    end
  end
end
local wake_id = '0-0'
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if last[1] then wake_id = last[1][1] end
return {taken, dropped, wake_id}
