-- End one grant: free its concurrency slot and refund the output tokens it reserved
-- but did not generate. Under a concurrency limit, a grant whose lease already expired
-- refunds nothing (its reservation counts as spent) and settling twice is harmless;
-- the node settles each grant once.
--
-- KEYS[1]  HASH of the GCRA states (field `o`: the output-token bucket)
-- KEYS[2]  ZSET of live grants (score: lease expiry in ms), under a concurrency limit
-- ARGV[1]  window in microseconds
-- ARGV[2]  output-token limit per window (0: none)
-- ARGV[3]  grant id
-- ARGV[4]  output tokens generated
-- ARGV[5]  output tokens the grant reserved
-- ARGV[6]  1 under a concurrency limit (the grant has a lease)
-- Returns 1 when the grant was live, 0 otherwise.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local grant = ARGV[3]

if ARGV[6] == '1' then
  local expiry = redis.call('ZSCORE', KEYS[2], grant)
  if not expiry then return 0 end
  redis.call('ZREM', KEYS[2], grant)
  if tonumber(expiry) <= now_ms then return 0 end
end
if limit > 0 then
  local refund = tonumber(ARGV[5]) - tonumber(ARGV[4])
  if refund > 0 then
    local tat = tonumber(redis.call('HGET', KEYS[1], 'o') or 0) or 0
    if tat > now then
      tat = tat - refund * (window / limit)
      if tat < now then tat = now end
      redis.call('HSET', KEYS[1], 'o', string.format('%.0f', tat))
    end
  end
end
return 1
