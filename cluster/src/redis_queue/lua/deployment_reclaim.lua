local max_deliveries = tonumber(ARGV[3])
local requeued, dead = {}, {}
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms())) do
  local meta = meta_key(job)
  local m = redis.call('HMGET', meta, 'state', 'entry', 'deliveries')
  if m[1] ~= 'leased' then
    redis.call('ZREM', KEYS[3], job)
  else
    local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
    local deliveries = tonumber(m[3] or '0')
    if deliveries >= max_deliveries then
      local payload = ''
      local e = redis.call('XRANGE', stream_of(job), m[2], m[2])
      if e[1] then payload = fields_of(e[1][2])['job'] or '' end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'id', job, 'job', payload, 'deliveries', deliveries, 'epoch', epoch)
      forget(job, m[2])
      dead[#dead + 1] = {job, epoch, deliveries}
    else
      redis.call('HSET', meta, 'state', 'waiting')
      redis.call('HDEL', meta, 'consumer', 'expires')
      redis.call('ZREM', KEYS[3], job)
      requeue(job)
      requeued[#requeued + 1] = {job, epoch}
    end
  end
end
if #requeued > 0 then wake() end
return {requeued, dead}
