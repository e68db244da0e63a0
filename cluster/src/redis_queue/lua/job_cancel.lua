local s = load()
if not s or s.status == 'done' then return {'none'} end
redis.call('HSET', KEYS[1], 'cancelled', 1)
if s.status == 'waiting' then
  finish(s.epoch, ARGV[1], ARGV[2])
  return {'waiting', s.deployment}
end
return {'leased'}
