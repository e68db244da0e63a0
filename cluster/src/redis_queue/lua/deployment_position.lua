local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'entry')
if not m[1] then return -1 end
if m[1] ~= 'waiting' then return 0 end
local index = redis.call('LPOS', KEYS[2], job)
if index then return index + 1 end
local level = level_of(job)
local stream = stream_of_level[level]
local position = redis.call('LLEN', KEYS[2])
for rank = 1, rank_of_level[level] - 1 do position = position + undelivered_in(streams[rank]) + set_aside(levels[rank]) end
if redis.call('HEXISTS', meta_key(job), 'parked') == 1 or redis.call('LPOS', free_of_level[level], job) then
  -- Parked or freed: older than every undelivered job of its priority, so it comes
  -- after the requeued jobs and those of higher priorities (its place among the other
  -- set-aside jobs of its priority is not counted).
  return position + 1
end
position = position + set_aside(level)
if redis.call('EXISTS', stream) == 0 then return 0 end
local ahead = redis.call('XRANGE', stream, '(' .. last_delivered(stream), m[2])
return position + #ahead
