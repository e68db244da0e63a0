-- (After the deployment prelude and the job prelude + `job_append` as the function
-- `job_append(KEYS, ARGV)`.)
-- `KEYS[14]`, `KEYS[15]`: the job's state and output stream (the slot of its queue
-- partition); `ARGV[3]` the job, `ARGV[4]` 1 when the events end the job, `ARGV[5..]`
-- `job_append`'s arguments. An append that stores the job's terminal event also
-- acknowledges the job (its entry, lease and lease hash go, as `deployment_ack`), and
-- answers a third element, 1; a job found cancelled, or whose output a failover lost,
-- is forgotten on the deployment side here too.
local job = ARGV[3]
local args = {}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
local reply = job_append({KEYS[14], KEYS[15]}, args)
if reply[1] == 'ok' and ARGV[4] == '1' then
  local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch', 'entry', 'level')
  if holds(m, args[2], args[1]) then
    forget_leased(job, m)
    reply[3] = 1
  end
elseif reply[1] == 'cancelled' or reply[1] == 'lost' then
  local entry = redis.call('HGET', meta_key(job), 'entry')
  if entry then forget(job, entry) end
end
return reply
