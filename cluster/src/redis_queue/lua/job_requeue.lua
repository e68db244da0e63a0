local s = redis.call('HMGET', KEYS[1], 'status', 'epoch')
if not s[1] or s[1] == 'done' then return 0 end
if tonumber(ARGV[1]) <= tonumber(s[2]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'status', 'waiting')
return 1
