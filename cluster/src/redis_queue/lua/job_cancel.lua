local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'deployment')
if not s[1] or s[1] == 'done' then return {'none'} end
redis.call('HSET', KEYS[1], 'cancelled', 1)
if s[1] == 'waiting' then
  finish(s[2], ARGV[1], ARGV[2])
  return {'waiting', s[3]}
end
return {'leased'}
