local job, level = ARGV[3], ARGV[8]
local stream = stream_of_level[level]
if not stream then return redis.error_reply('unknown priority ' .. tostring(level)) end
if redis.call('EXISTS', meta_key(job)) == 1 then return {'duplicate'} end
local c = counts()
if not c.group[level] then
  -- (A group made meanwhile by an older version: BUSYGROUP, which is fine.)
  redis.pcall('XGROUP', 'CREATE', stream, ARGV[2], '0', 'MKSTREAM')
  redis.call('HSET', COUNT, 'g:' .. level, 1)
end
local requeued = c.requeued
local w = requeued + c.high + c.normal + c.low
if w >= tonumber(ARGV[7]) then return {'full', w} end
local position = requeued + 1
for rank = 1, rank_of_level[level] do position = position + c[levels[rank]] end
local entry
if ARGV[9] ~= '' then
  -- Promised to consumer ARGV[9] for ARGV[10] ms, by the server's clock.
  local ends = now_ms() + tonumber(ARGV[10])
  entry = redis.call('XADD', stream, '*', 'id', job, 'job', ARGV[4], 't', ARGV[5], 'dl', ARGV[6], 'rr', ARGV[9], 'ru', ends)
else
  entry = redis.call('XADD', stream, '*', 'id', job, 'job', ARGV[4], 't', ARGV[5], 'dl', ARGV[6])
end
redis.call('HSET', meta_key(job), 'entry', entry, 'epoch', 1, 'deliveries', 0, 'state', 'waiting', 'level', level)
redis.call('HINCRBY', COUNT, level, 1)
-- Only a consumer that found nothing waits on the wake-up stream.
-- (Answered, so that the gateway also wakes partition 0's stream, which the consumers of
-- a partitioned queue wait on.)
local woke = 0
if c.asleep then
  wake()
  redis.call('HDEL', COUNT, 'asleep')
  woke = 1
end
return {'ok', position, woke}
