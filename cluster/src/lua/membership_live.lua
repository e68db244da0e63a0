-- KEYS[1] nodes index; ARGV[1] node record key prefix (same hash tag), ARGV[2] ttl ms
local now = now_ms()
local ttl = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local live, dead = {}, {}
for i = 1, #members, 2 do
  local id, beat = members[i], tonumber(members[i + 1])
  local record = redis.call('GET', ARGV[1] .. id)
  if record and now - beat <= ttl then
    table.insert(live, {id, beat, record})
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', ARGV[1] .. id)
    table.insert(dead, id)
  end
end
return {now, live, dead}
