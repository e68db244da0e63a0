local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'entry')
if m[1] ~= 'waiting' then return 0 end
forget(job, m[2])
return 1
