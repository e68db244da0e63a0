local s = load()
if not s then return {'unknown'} end
if s.cancelled then
  if s.status ~= 'done' then finish(s.epoch, ARGV[3], ARGV[4]) end
  return {'cancelled', s.deployment}
end
-- A first delivery (epoch 1, never leased before) starts here, with its first append:
-- `lease` does not call `job_start` for it. Epoch 1 is delivered once (a redelivery
-- raises it), so its writer is the one consumer that took the new entry.
local first = s.status == 'waiting' and s.epoch == '1' and not s.consumer and ARGV[1] == '1'
if first then s.status, s.consumer = 'leased', ARGV[2] end
-- ARGV[5]: the last sequence number this writer knows stored. Output that ends
-- elsewhere under its lease means an earlier try of this very append was stored after
-- all (its reply lost, or it ran late): it is not stored twice.
local last, after = s.last_seq, tonumber(ARGV[5])
if s.epoch == ARGV[1] and s.consumer == ARGV[2] and last ~= after then
  local n = 0
  for i = 7, #ARGV, 2 do
    n = n + 1
    if ARGV[i + 1] == '1' then break end
  end
  if last == after + n then return {'ok', last} end
  if last < after and not s.finished then
    -- Output this writer had stored is gone: the master that acknowledged it failed
    -- over before its replica had it (replication is asynchronous). A reader may have
    -- read it, so nothing can be written in its place: the job ends with ARGV[6] past
    -- every number a reader can have seen (this append's, should an earlier try of it
    -- have reached the old master).
    local seq = after + n + 1
    redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[1], 'v', ARGV[6])
    redis.call('HSET', KEYS[1], 'last_seq', seq, 'finished', 1, 'status', 'done')
    expire_all(ARGV[4])
    return {'lost', s.deployment}
  end
  return {'fenced'}
end
if s.status ~= 'leased' or s.epoch ~= ARGV[1] or s.consumer ~= ARGV[2] then return {'fenced'} end
local was_finished = s.finished
local seq, finished, new_out = store(ARGV[1], last, was_finished, ARGV, 7)
if finished then
  -- The terminal event ends the job here (the ack finds it done): its state and output
  -- are kept for the output ttl from now.
  redis.call('HSET', KEYS[1], 'last_seq', seq, 'finished', 1, 'status', 'done')
  if not was_finished then expire_all(ARGV[4]) end
  return {'ok', seq}
end
if first then
  redis.call('HSET', KEYS[1], 'last_seq', seq, 'status', 'leased', 'consumer', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'last_seq', seq)
end
-- The output stream expires with the state, set once, when it is created.
if new_out then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return {'ok', seq}
