-- End one grant: free its concurrency slot and refund the output tokens it reserved
-- but did not generate. A grant whose lease already expired refunds nothing (its
-- reservation counts as spent). Settling twice is harmless.
--
-- KEYS[1]  GCRA state of the output-token bucket
-- KEYS[2]  ZSET of live grants (score: lease expiry in ms)
-- KEYS[3]  HASH grant id -> reserved output tokens
-- ARGV[1]  window in microseconds
-- ARGV[2]  output-token limit per window (0: none)
-- ARGV[3]  grant id
-- ARGV[4]  output tokens generated
-- Returns 1 when the grant was live, 0 otherwise.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local grant = ARGV[3]

local expiry = redis.call('ZSCORE', KEYS[2], grant)
local reserved = redis.call('HGET', KEYS[3], grant)
redis.call('ZREM', KEYS[2], grant)
redis.call('HDEL', KEYS[3], grant)
if not expiry or tonumber(expiry) <= now_ms then
  return 0
end
if limit > 0 and reserved then
  local refund = tonumber(reserved) - tonumber(ARGV[4])
  if refund > 0 then
    local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
    if tat > now then
      tat = tat - refund * (window / limit)
      if tat > now then
        redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
      else
        redis.call('DEL', KEYS[1])
      end
    end
  end
end
return 1
