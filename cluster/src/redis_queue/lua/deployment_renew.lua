local expires = now_ms() + tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV, 3 do
  local job = ARGV[i]
  local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch')
  if holds(m, ARGV[i + 1], ARGV[i + 2]) then
    redis.call('HSET', meta_key(job), 'expires', expires)
    redis.call('ZADD', KEYS[3], expires, job)
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
