if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'consumer', 'cancelled', 'deployment')
if s[4] == '1' then
  if s[1] ~= 'done' then finish(s[2], ARGV[3], ARGV[4]) end
  return {'cancelled', s[5]}
end
if s[1] ~= 'leased' or s[2] ~= ARGV[1] or s[3] ~= ARGV[2] then return {'fenced'} end
for i = 5, #ARGV, 3 do push(ARGV[1], ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2]) end
if redis.call('HGET', KEYS[1], 'finished') == '1' then expire_all(ARGV[4]) else align_ttl() end
return {'ok', redis.call('HGET', KEYS[1], 'last_seq')}
