#!lua flags=allow-oom
-- heartbeat.lua: extend the leases of (id, token) pairs the tokens still own.
-- KEYS: standard 1-13 (touches 1 and 2)
-- ARGV: 1 clock offset, 2 lease seconds, then pairs: id, token, id, token, ...
-- Touches: {tag}:j:<id> (GET: the record is not rewritten, the lease deadline is the
--          job's score in leases), leases (ZADD).
-- Returns: a list of 1 (still owned, extended) or 0 per pair.
local lease_until = fmt(NOW + tonumber(ARGV[2]))
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local j = read_job(KEYS[1] .. id)
  if j and j ~= CORRUPT and j[ST] == 'p' and j[TOK] == token then
    redis.call('ZADD', KEYS[2], lease_until, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
