#!lua flags=allow-oom
-- release_lock.lua: free the lock if `owner` holds it with `epoch` (expired or not).
-- KEYS: 1 the lock hash, 2 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 owner, 3 epoch, 4 "1" when resent after a lost reply,
--       5 cache ms
-- Touches: the lock hash (owner, exp removed; epoch kept so epochs only grow), the
--          reply cache.
-- Returns: 1 released | 0 not held
local earlier = cached_reply(KEYS[2], ARGV[4])
if earlier then
  return earlier
end
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= ARGV[2] or l[2] ~= ARGV[3] then
  return 0
end
redis.call('HDEL', KEYS[1], 'owner', 'exp')
return remember(KEYS[2], 1, ARGV[5])
