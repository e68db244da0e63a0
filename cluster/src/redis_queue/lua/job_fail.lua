local s = redis.call('HMGET', KEYS[1], 'status', 'epoch')
if not s[1] or s[1] == 'done' then return 0 end
local epoch = math.max(tonumber(ARGV[1]), tonumber(s[2]))
redis.call('HSET', KEYS[1], 'epoch', epoch)
finish(epoch, ARGV[2], ARGV[3])
return 1
