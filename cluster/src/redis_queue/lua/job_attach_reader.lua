if redis.call('HEXISTS', KEYS[1], 'i') == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'readers', 1)
