#!lua flags=allow-oom
-- renew_lock.lua: extend the lock if `owner` holds it with `epoch` and it is live.
-- KEYS: 1 the lock hash
-- ARGV: 1 clock offset, 2 owner, 3 epoch, 4 ttl seconds
-- Touches: the lock hash (exp).
-- Returns: 1 renewed | 0 not held
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'exp')
if l[1] ~= ARGV[2] or l[2] ~= ARGV[3] or (not l[3]) or tonumber(l[3]) <= NOW then
  return 0
end
redis.call('HSET', KEYS[1], 'exp', fmt(NOW + tonumber(ARGV[4])))
return 1
