local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch', 'entry')
if not holds(m, ARGV[4], ARGV[5]) then return 0 end
forget(job, m[4])
return 1
