-- Appends one reply to a `reply_to` stream, in one step, only where Swell may write it
-- (src/ingress/reply.rs), and at most once per request and `seq`. A key of another
-- type is left alone. A stream Swell creates is marked with an empty consumer group and
-- gets the TTL; only a stream so marked has its TTL refreshed, so a stream the producer
-- made itself keeps the lifetime it chose.
--
-- KEYS[1]     the reply_to stream
-- KEYS[2]     the last `seq` written for this request (Swell's key, in the same hash
--             slot: `seq_key` in reply.rs); it expires with the TTL after its last write
-- ARGV[1]     the TTL of a stream Swell created (and of KEYS[2]), in milliseconds
-- ARGV[2]     its length cap (MAXLEN ~)
-- ARGV[3]     the name of the consumer group that marks a stream Swell created
-- ARGV[4]     the reply's seq
-- ARGV[5..]   the reply's fields and values
-- Returns 'created' (a new stream: marked, with the TTL), 'refreshed' (a stream Swell
-- created: its TTL refreshed), 'kept' (a stream Swell did not create: its TTL untouched),
-- 'duplicate' (this request's reply `seq` was written already: a retried write whose first
-- try went through, or arrived late; nothing written), or 'wrongtype:<type>' (a key of
-- another type: nothing was written).
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return 'wrongtype:' .. kind
end
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) >= tonumber(ARGV[4]) then
  return 'duplicate'
end
redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 5))
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[1])
if kind == 'none' then
  redis.call('XGROUP', 'CREATE', key, ARGV[3], '$')
  redis.call('PEXPIRE', key, ARGV[1])
  return 'created'
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  -- Each group is a flat list: name, <name>, consumers, <n>, ...
  if group[2] == ARGV[3] then
    redis.call('PEXPIRE', key, ARGV[1])
    return 'refreshed'
  end
end
return 'kept'
