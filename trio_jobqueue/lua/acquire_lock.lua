#!lua flags=allow-oom
-- acquire_lock.lua: take a free/expired lock (epoch + 1) or renew one already held.
-- KEYS: 1 the lock hash {tag}:lock:<name>, 2 the registration prefix {tag}:w: (the
--       holder's id is appended: same slot)
-- ARGV: 1 clock offset, 2 owner, 3 ttl seconds, 4 "1": a holder without a live
--       registration counts as gone (take_from_dead)
-- Touches: the lock hash (owner, epoch, exp), the holder's registration (HGET). The lock
--          never expires, so epochs only grow.
-- Returns: the epoch, or nil when another owner holds the lock.
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'exp')
local held = l[1] and l[3] and tonumber(l[3]) > NOW
if held and ARGV[4] == '1' and l[1] ~= ARGV[2] then
  local registered = redis.call('HGET', KEYS[2] .. l[1], 'exp')
  held = registered and tonumber(registered) > NOW
end
local expires = fmt(NOW + tonumber(ARGV[3]))
if held and l[1] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'exp', expires)
  return tonumber(l[2])
end
if held then
  return nil
end
local epoch = tonumber(l[2] or '0') + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'epoch', epoch, 'exp', expires)
return epoch
