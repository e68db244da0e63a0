local requeued = redis.call('LLEN', KEYS[2])
local exact, w = {}, requeued
for _, level in ipairs(levels) do
  exact[level] = exact_count(level)
  w = w + exact[level]
end
-- Set the counts the other scripts keep to what they must be, should anything have
-- moved them wrongly (a deployment never enqueued to gets no key).
local kept = redis.call('HMGET', COUNT, 'high', 'normal', 'low', 'v', 'r')
if (kept[4] or w > 0) and (tonumber(kept[1]) ~= exact.high or tonumber(kept[2]) ~= exact.normal
    or tonumber(kept[3]) ~= exact.low or tonumber(kept[5]) ~= requeued) then
  -- (`p` too: whether jobs are parked is looked at again.)
  redis.call('HSET', COUNT, 'high', exact.high, 'normal', exact.normal, 'low', exact.low, 'v', 1, 'r', requeued, 'p', 1)
end
local oldest, shown = nil, ''
local function consider(e)
  if e[1] then
    local text = fields_of(e[1][2])['t']
    local t = tonumber(text)
    if t and (not oldest or t < oldest) then oldest, shown = t, text end
  end
end
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
  local entry = redis.call('HGET', meta_key(head), 'entry')
  local stream = stream_of(head)
  if entry and redis.call('EXISTS', stream) == 1 then consider(redis.call('XRANGE', stream, entry, entry)) end
end
local function consider_job(job)
  if not job then return end
  local entry = redis.call('HGET', meta_key(job), 'entry')
  local stream = stream_of(job)
  if entry and redis.call('EXISTS', stream) == 1 then consider(redis.call('XRANGE', stream, entry, entry)) end
end
for _, level in ipairs(levels) do
  consider_job(redis.call('LINDEX', free_of_level[level], 0))
  consider_job(redis.call('ZRANGE', parked_set(level), 0, 0)[1])
end
for _, stream in ipairs(streams) do
  if undelivered_in(stream) > 0 then
    consider(redis.call('XRANGE', stream, '(' .. last_delivered(stream), '+', 'COUNT', 1))
  end
end
return {w, redis.call('ZCARD', KEYS[3]), shown}
