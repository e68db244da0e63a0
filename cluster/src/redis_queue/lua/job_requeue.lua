local s = load()
if not s or s.status == 'done' then return 0 end
if tonumber(ARGV[1]) <= tonumber(s.epoch) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'status', 'waiting')
return 1
