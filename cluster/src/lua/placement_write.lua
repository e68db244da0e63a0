-- KEYS[1] leader lease, KEYS[2] placement hash; ARGV[1] "<token> <node id>",
-- ARGV[2] token, ARGV[3] leader node id, ARGV[4] placement JSON, then pairs of
-- (node id, assignment JSON)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 'not_leader'} end
local stored = tonumber(redis.call('HGET', KEYS[2], 'token') or '0')
if tonumber(ARGV[2]) < stored then return {0, 'stale_token'} end
if redis.call('HGET', KEYS[2], 'all') == ARGV[4] then
  redis.call('HSET', KEYS[2], 'token', ARGV[2], 'leader', ARGV[3])
  return {1, tonumber(redis.call('HGET', KEYS[2], 'version') or '0'), 0}
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'leader', ARGV[3], 'all', ARGV[4])
local present = {}
for i = 5, #ARGV, 2 do
  local field = 'node:' .. ARGV[i]
  present[field] = true
  if redis.call('HGET', KEYS[2], field) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[2], field, ARGV[i + 1], 'nver:' .. ARGV[i], version)
  end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 5) == 'node:' and not present[field] then
    redis.call('HDEL', KEYS[2], field, 'nver:' .. string.sub(field, 6))
  end
end
return {1, version, 1}
