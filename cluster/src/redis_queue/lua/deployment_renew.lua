local now = now_ms()
local expires = now + tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV, 3 do
  local job = ARGV[i]
  local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch')
  if holds(m, ARGV[i + 1], ARGV[i + 2]) then
    -- Alive (unless it said it stopped taking work: a draining replica still renews).
    local at = redis.call('HGET', SEEN, ARGV[i + 1])
    if at ~= '0' and (not at or tonumber(at) < now) then redis.call('HSET', SEEN, ARGV[i + 1], now) end
    redis.call('HSET', meta_key(job), 'expires', expires)
    redis.call('ZADD', KEYS[3], expires, job)
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
