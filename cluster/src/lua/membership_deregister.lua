-- KEYS[1] node record, KEYS[2] nodes index; ARGV[1] node id
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
