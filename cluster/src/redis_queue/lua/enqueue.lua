-- (After the deployment prelude and `deployment_enqueue` as the function `enqueue`.)
-- The job's state (`KEYS[14]`, in the slot of its queue partition) is created with what
-- never changes (`ARGV[11]`: its deployment, tenant and stream metadata, a line each)
-- and expires in `ARGV[12]` ms; an existing one refuses the job as a duplicate. A job
-- the deployment refuses (full, duplicate) leaves no state.
if redis.call('HSETNX', KEYS[14], 'i', ARGV[11]) == 0 then return {'duplicate'} end
redis.call('PEXPIRE', KEYS[14], ARGV[12])
local answer = enqueue()
if answer[1] ~= 'ok' then redis.call('DEL', KEYS[14]) end
return answer
