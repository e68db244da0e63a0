local function expire_all(ttl_ms)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
-- Store the events of `json, terminal (0/1), tokens` triples `args[first..]` under
-- `epoch` after sequence number `seq`; nothing once a terminal event is stored
-- (`finished`), like the in-memory queue. The tokens go in one `APPEND`, unless the job
-- finishes here (nothing resumes a finished job). Answers the last sequence number,
-- whether the job is finished, and whether the output stream and the token string were
-- created here.
local function store(epoch, seq, finished, args, first)
  local from, tokens = seq, ''
  for i = first, #args, 3 do
    if finished then break end
    seq = seq + 1
    redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', args[i])
    tokens = tokens .. args[i + 2]
    finished = args[i + 1] == '1'
  end
  local new_tokens = tokens ~= '' and not finished and redis.call('APPEND', KEYS[3], tokens) == #tokens
  return seq, finished, from == 0 and seq > 0, new_tokens
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
