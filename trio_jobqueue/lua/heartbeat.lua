#!lua flags=allow-oom
-- heartbeat.lua: extend the leases of (id, token) pairs the tokens still own.
-- KEYS: standard 1-7 (touches 1 and 4)
-- ARGV: 1 clock offset, 2 lease seconds, then pairs: id, token, id, token, ...
-- Touches: {tag}:j:<id> (HSET lease), leases (ZADD).
-- Returns: a list of 1 (still owned, extended) or 0 per pair.
local lease_until = fmt(NOW + tonumber(ARGV[2]))
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, 'state', 'token')
  if f[1] == 'processing' and f[2] == token then
    redis.call('HSET', key, 'lease', lease_until)
    redis.call('ZADD', KEYS[4], lease_until, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
