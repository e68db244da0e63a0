local w = waiting()
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
