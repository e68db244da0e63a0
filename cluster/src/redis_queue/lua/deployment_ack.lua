local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch', 'entry', 'level')
if not holds(m, ARGV[4], ARGV[5]) then return 0 end
forget_leased(job, m)
return 1
