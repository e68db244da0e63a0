local s = load()
if not s then return {'gone'} end
if s.status == 'done' then return {'done'} end
local epoch = tonumber(ARGV[1])
if epoch < tonumber(s.epoch) then return {'stale'} end
if s.cancelled then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  finish(epoch, ARGV[3], ARGV[4])
  return {'done'}
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'status', 'leased', 'consumer', ARGV[2])
-- The output so far (its token events are what was delivered), read only if there is
-- any.
local out = {}
if s.last_seq > 0 then out = redis.call('XRANGE', KEYS[2], '-', '+') end
return {'ok', out, s.last_seq}
