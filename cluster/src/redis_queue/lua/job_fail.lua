local s = load()
if not s or s.status == 'done' then return 0 end
local epoch = math.max(tonumber(ARGV[1]), tonumber(s.epoch))
redis.call('HSET', KEYS[1], 'epoch', epoch)
finish(epoch, ARGV[2], ARGV[3])
return 1
