-- Admit one request of one tenant, atomically, on the Redis server's clock; with it,
-- take a reserve for more requests of the node, and take back what the node's last
-- reserve did not use. See actors/src/redis_quota.rs for the key layout and the reply.
--
-- KEYS[1]     HASH of the GCRA states (the theoretical arrival time, TAT, in
--             microseconds) of the requests, prompt-token and output-token buckets
--             (fields `r`, `p`, `o`), expiring when every bucket is full
-- KEYS[2]     ZSET of live grants (member: grant id, score: lease expiry in ms), kept
--             only under a concurrency limit
-- ARGV[1]     window in microseconds (a limit of N per window: burst N, sustain N/window)
-- ARGV[2..4]  requests, prompt-token and output-token limits per window (0: none)
-- ARGV[5]     max concurrent requests (0: none)
-- ARGV[6]     requests asked: 1, or 0 to only give back
-- ARGV[7]     prompt tokens of the request
-- ARGV[8]     output tokens it reserves (max_tokens)
-- ARGV[9]     grant id ("<node>:<n>"); the reserve's slots are "<grant id>.<k>"
-- ARGV[10]    lease TTL in milliseconds
-- ARGV[11..14] the reserve asked for besides the request: requests, prompt tokens,
--             output tokens, new concurrency slots (all or nothing; refused without
--             refusing the request)
-- ARGV[15..17] given back (unused by the node's last reserve): requests, prompt tokens,
--             output tokens
-- ARGV[18..]  given back: the reserve's unused concurrency slots (grant ids)
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now / 1000)
local window = tonumber(ARGV[1])
local limits = { tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]) }
local max_concurrent = tonumber(ARGV[5])
local asked = tonumber(ARGV[6])
local amounts = { asked, tonumber(ARGV[7]), tonumber(ARGV[8]) }
local more = { tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]) }
local more_slots = tonumber(ARGV[14])
local returned = { tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17]) }
local grant = ARGV[9]
local lease_ttl_ms = tonumber(ARGV[10])

if #ARGV >= 18 then
  redis.call('ZREM', KEYS[2], unpack(ARGV, 18))
end

-- Leases that were not renewed in time are gone: their holder died or lost Redis.
-- Looked for only when they could make the difference: at the limit.
local in_flight = 0
if max_concurrent > 0 then
  in_flight = redis.call('ZCARD', KEYS[2])
  if in_flight >= max_concurrent then
    local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, 1000)
    if #expired > 0 then
      redis.call('ZREM', KEYS[2], unpack(expired))
      in_flight = in_flight - #expired
    end
  end
end

-- A bucket's state is its TAT: the time it will be full again (never before now).
-- What a reserve gives back moves it back (not before now).
local fields = { 'r', 'p', 'o' }
local tats = {}
local changed = false
if limits[1] > 0 or limits[2] > 0 or limits[3] > 0 then
  local stored = redis.call('HMGET', KEYS[1], 'r', 'p', 'o')
  for i = 1, 3 do
    if limits[i] > 0 then
      local tat = tonumber(stored[i] or 0) or 0
      if returned[i] > 0 and tat > now then
        tat = tat - returned[i] * (window / limits[i])
        changed = true
      end
      if tat < now then tat = now end
      tats[i] = tat
    end
  end
end

-- Writes the buckets (and their expiry, when every one is full again).
local function store()
  local taken, full_at = {}, now
  for i = 1, 3 do
    if limits[i] > 0 then
      taken[#taken + 1] = fields[i]
      taken[#taken + 1] = string.format('%.0f', tats[i])
      if tats[i] > full_at then full_at = tats[i] end
    end
  end
  if #taken > 0 then
    redis.call('HSET', KEYS[1], unpack(taken))
    redis.call('PEXPIRE', KEYS[1], math.ceil((full_at - now) / 1000) + 1)
  end
end

-- limit, remaining, microseconds until full; for each bucket, then concurrency.
local function snapshot()
  local reply = {}
  for i = 1, 3 do
    if limits[i] > 0 then
      local interval = window / limits[i]
      local owed = tats[i] - now
      local remaining = math.floor((window - owed) / interval + 1e-6)
      if remaining < 0 then remaining = 0 end
      reply[#reply + 1] = limits[i]
      reply[#reply + 1] = remaining
      reply[#reply + 1] = math.ceil(owed)
    else
      reply[#reply + 1] = 0
      reply[#reply + 1] = 0
      reply[#reply + 1] = 0
    end
  end
  local free = max_concurrent - in_flight
  if free < 0 then free = 0 end
  reply[#reply + 1] = max_concurrent
  reply[#reply + 1] = free
  reply[#reply + 1] = 0
  return reply
end

local function answer(granted, kind, retry_after, reserved)
  if changed then store() end
  local reply = { granted, kind, retry_after }
  for _, value in ipairs(snapshot()) do reply[#reply + 1] = value end
  reply[#reply + 1] = reserved
  return reply
end

if asked == 0 then return answer(1, 0, 0, 0) end

-- Whether `extra` (0 or 1: the reserve too) fits every limit; else the limit that
-- stops it and when a retry can succeed (-1: never).
local function fits(extra)
  for i = 1, 3 do
    if limits[i] > 0 then
      local amount = amounts[i] + extra * more[i]
      if amount > limits[i] then return false, i, -1 end
      local wait = tats[i] + amount * (window / limits[i]) - window - now
      if wait > 0 then return false, i, math.ceil(wait) end
    end
  end
  if max_concurrent > 0 and in_flight + 1 + extra * more_slots > max_concurrent then return false, 4, 0 end
  return true
end

-- All or nothing: check every limit before taking from any; the reserve only if it
-- fits as well.
local extra = 0
if more[1] > 0 and fits(1) then extra = 1 end
if extra == 0 then
  local ok, kind, retry_after = fits(0)
  if not ok then
    if kind == 4 then
      -- A slot frees when a request ends; at the latest when the oldest lease expires.
      retry_after = 1000000
      local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      if oldest[2] then
        local until_expiry = (tonumber(oldest[2]) - now_ms) * 1000
        if until_expiry < retry_after then retry_after = until_expiry end
      end
      if retry_after < 1000 then retry_after = 1000 end
    end
    return answer(0, kind, retry_after, 0)
  end
end

for i = 1, 3 do
  if limits[i] > 0 then
    tats[i] = tats[i] + (amounts[i] + extra * more[i]) * (window / limits[i])
    changed = true
  end
end
if max_concurrent > 0 then
  local slots = { now_ms + lease_ttl_ms, grant }
  for k = 1, extra * more_slots do
    slots[#slots + 1] = now_ms + lease_ttl_ms
    slots[#slots + 1] = grant .. '.' .. k
  end
  redis.call('ZADD', KEYS[2], unpack(slots))
  redis.call('PEXPIRE', KEYS[2], lease_ttl_ms * 2)
  in_flight = in_flight + #slots / 2
end
return answer(1, 0, 0, extra)
