-- Extend the leases of a node's in-flight grants of one tenant, in one call. A lease
-- that already expired is not brought back (its slot may have been given away).
--
-- KEYS[1]     ZSET of live grants (score: lease expiry in ms)
-- ARGV[1]     lease TTL in milliseconds
-- ARGV[2..]   grant ids
-- Returns the grant ids whose lease was lost.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now_ms = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
local ttl_ms = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expiry and tonumber(expiry) > now_ms then
    redis.call('ZADD', KEYS[1], 'XX', now_ms + ttl_ms, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl_ms * 2)
end
return lost
