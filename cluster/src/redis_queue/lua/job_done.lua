local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status ~= 'done' then
  -- Acknowledged without a terminal event: done now.
  redis.call('HSET', KEYS[1], 'status', 'done')
  expire_all(ARGV[1])
end
return 1
