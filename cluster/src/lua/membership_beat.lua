-- KEYS[1] node record, KEYS[2] nodes index; ARGV[1] node id, ARGV[2] record JSON, ARGV[3] ttl ms
local existed = redis.call('EXISTS', KEYS[1])
local now = now_ms()
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {existed, now}
