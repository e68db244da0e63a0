local s = load()
if not s then return 0 end
if s.status ~= 'done' then
  -- Acknowledged without a terminal event: done now.
  redis.call('HSET', KEYS[1], 'status', 'done')
  expire_all(ARGV[1])
end
return 1
