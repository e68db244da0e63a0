-- Store one event (ignored once a terminal event is stored, like the in-memory queue).
local function push(epoch, json, terminal, tokens)
  if redis.call('HGET', KEYS[1], 'finished') == '1' then return end
  local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', json)
  if tokens ~= '' then redis.call('APPEND', KEYS[3], tokens) end
  if terminal then redis.call('HSET', KEYS[1], 'finished', '1') end
end
local function expire_all(ttl_ms)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
-- Output keys live as long as the state hash until the job ends.
local function align_ttl()
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
local function finish(epoch, json, ttl_ms)
  push(epoch, json, true, '')
  redis.call('HSET', KEYS[1], 'status', 'done')
  expire_all(ttl_ms)
end
