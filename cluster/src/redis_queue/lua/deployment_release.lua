local job = ARGV[3]
local meta = meta_key(job)
local m = redis.call('HMGET', meta, 'state', 'consumer', 'epoch')
if not holds(m, ARGV[4], ARGV[5]) then return 0 end
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
if redis.call('HINCRBY', meta, 'deliveries', -1) < 0 then redis.call('HSET', meta, 'deliveries', 0) end
redis.call('HSET', meta, 'state', 'waiting')
redis.call('HDEL', meta, 'consumer', 'expires')
redis.call('ZREM', KEYS[3], job)
requeue(job)
wake()
return epoch
