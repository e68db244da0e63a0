-- The job's state (`KEYS[1]`): `i`, written when the job is created (its deployment,
-- tenant and the gateway's stream metadata, a line each), and what its deliveries
-- wrote (`status`, `epoch`, `consumer`, `cancelled`, `last_seq`, `finished`; absent:
-- waiting, epoch 1, never started). Nil for an unknown (or expired) job.
local function load()
  local s = redis.call('HMGET', KEYS[1], 'i', 'status', 'epoch', 'consumer', 'cancelled', 'last_seq', 'finished')
  if not s[1] then return nil end
  return {status = s[2] or 'waiting', epoch = s[3] or '1', consumer = s[4], cancelled = s[5] == '1',
    last_seq = tonumber(s[6]) or 0, finished = s[7] == '1', deployment = string.match(s[1], '^[^\n]*')}
end
local function expire_all(ttl_ms)
  for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
-- Store the events of `json, terminal (0/1)` pairs `args[first..]` under `epoch` after
-- sequence number `seq`, in one entry whatever their number: its id is `0-<the last
-- one's number>`, its `v` the event or, for several, their JSON array (the numbers
-- before the last are implied). Nothing once a terminal event is stored (`finished`),
-- like the in-memory queue. Answers the last sequence number, whether the job is
-- finished, and whether the output stream was created here.
local function store(epoch, seq, finished, args, first)
  local from, events = seq, {}
  for i = first, #args, 2 do
    if finished then break end
    seq = seq + 1
    events[#events + 1] = args[i]
    finished = args[i + 1] == '1'
  end
  if #events == 1 then
    redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', events[1])
  elseif #events > 1 then
    redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', '[' .. table.concat(events, ',') .. ']')
  end
  return seq, finished, from == 0 and seq > 0
end
-- End the job with a terminal event written by the queue (ignored after one is
-- stored); its keys expire `ttl_ms` from now.
local function finish(epoch, json, ttl_ms)
  local s = redis.call('HMGET', KEYS[1], 'last_seq', 'finished')
  if s[2] ~= '1' then
    local seq = (tonumber(s[1]) or 0) + 1
    redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', json)
    redis.call('HSET', KEYS[1], 'last_seq', seq, 'finished', 1, 'status', 'done')
  else
    redis.call('HSET', KEYS[1], 'status', 'done')
  end
  expire_all(ttl_ms)
end
