-- release_lock.lua: free the lock if `owner` holds it with `epoch` (expired or not).
-- KEYS: 1 the lock hash
-- ARGV: 1 clock offset, 2 owner, 3 epoch
-- Touches: the lock hash (owner, exp removed; epoch kept so epochs only grow).
-- Returns: 1 released | 0 not held
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= ARGV[2] or l[2] ~= ARGV[3] then
  return 0
end
redis.call('HDEL', KEYS[1], 'owner', 'exp')
return 1
