#!lua flags=no-writes
-- lock_holder.lua: who holds a leader lock now.
-- KEYS: 1 the lock hash {tag}:lock:<name>
-- ARGV: 1 clock offset
-- Touches: the lock hash (HMGET); writes nothing.
-- Returns: {owner, epoch, expiry} of a live holder, or nil.
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'exp')
if l[1] and l[3] and tonumber(l[3]) > NOW then
  return {l[1], l[2], l[3]}
end
return nil
