#!lua flags=no-writes
-- list_workers.lua: the live registrations, oldest expiry first (the client sorts them).
-- KEYS: 1 the registration prefix {tag}:w: (the raw worker id is appended: same slot),
--       2 the registry index {tag}:workers
-- ARGV: 1 clock offset
-- Touches: the index (ZRANGEBYSCORE), the registrations (HMGET); writes nothing.
-- Returns: {worker id, record, seen, exp, ...} for every live registration.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. fmt(NOW), '+inf')) do
  local f = redis.call('HMGET', KEYS[1] .. id, 'r', 'seen', 'exp')
  if f[1] and f[3] and tonumber(f[3]) > NOW then
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
  end
end
return out
