local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'cancelled', 'last_seq')
if not s[1] then return {'gone'} end
if s[1] == 'done' then return {'done'} end
local epoch = tonumber(ARGV[1])
if epoch < tonumber(s[2]) then return {'stale'} end
if s[3] == '1' then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  finish(epoch, ARGV[3], ARGV[4])
  return {'done'}
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'status', 'leased', 'consumer', ARGV[2])
-- The output so far (its token events are what was delivered), read only if there is
-- any.
local out = {}
if tonumber(s[4] or '0') > 0 then out = redis.call('XRANGE', KEYS[2], '-', '+') end
return {'ok', out, s[4]}
