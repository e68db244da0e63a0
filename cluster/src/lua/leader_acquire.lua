-- KEYS[1] lease, KEYS[2] token counter; ARGV[1] node id, ARGV[2] ttl ms
local current = redis.call('GET', KEYS[1])
if not current then
  local token = redis.call('INCR', KEYS[2])
  if token == 1 then
    -- The counter was lost (or never existed): restart it from the server clock so
    -- tokens stay above those issued before.
    token = now_ms()
    redis.call('SET', KEYS[2], token)
  end
  redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
  return {1, token, ARGV[1]}
end
local space = string.find(current, ' ', 1, true)
local token = string.sub(current, 1, space - 1)
local holder = string.sub(current, space + 1)
if holder == ARGV[1] then
  -- Our own lease (a renewal whose answer was lost): adopt it.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, token, holder}
end
return {0, token, holder}
