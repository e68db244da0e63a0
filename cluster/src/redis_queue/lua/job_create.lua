if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', 1, 'status', 'waiting', 'cancelled', 0, 'deployment', ARGV[1], 'last_seq', 0, 'finished', 0, 'tenant', ARGV[3], 'meta', ARGV[4], 'readers', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
