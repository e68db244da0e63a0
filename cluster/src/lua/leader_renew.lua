-- KEYS[1] lease; ARGV[1] "<token> <node id>", ARGV[2] ttl ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
