local job = ARGV[3]
local entry = redis.call('HGET', meta_key(job), 'entry')
if not entry then return 0 end
forget(job, entry)
return 1
