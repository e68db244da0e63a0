local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'entry')
if m[1] ~= 'waiting' then return 0 end
local index = redis.call('LPOS', KEYS[2], job)
if index then return index + 1 end
local level = level_of(job)
local stream = stream_of_level[level]
if redis.call('EXISTS', stream) == 0 then return 0 end
local position = redis.call('LLEN', KEYS[2])
for rank = 1, rank_of_level[level] - 1 do position = position + undelivered_in(streams[rank]) end
local ahead = redis.call('XRANGE', stream, '(' .. last_delivered(stream), m[2])
return position + #ahead
