#!lua flags=allow-oom
-- update_ttl.lua: restart a terminal job's TTL from now.
-- KEYS: standard 1-7 (touches 1, 5, 6)
-- ARGV: 1 clock offset, 2 job id, 3 ttl seconds
-- Touches: {tag}:j:<id> (HSET ttl/expires, PEXPIREAT), completed or failed (ZADD).
-- Returns: "updated" | "not_found" | "not_terminal" | "missing_payload"
local id = ARGV[2]
local key = KEYS[1] .. id
local state = live(key, id)
if not state then
  return 'not_found'
end
if state ~= 'completed' and state ~= 'failed' then
  return 'not_terminal'
end
local field, index = 'result', KEYS[5]
if state == 'failed' then
  field, index = 'error', KEYS[6]
end
if redis.call('HEXISTS', key, field) == 0 then
  return 'missing_payload'
end
local ttl = tonumber(ARGV[3])
local expires = NOW + ttl
redis.call('HSET', key, 'ttl', fmt(ttl), 'expires', fmt(expires))
redis.call('ZADD', index, fmt(expires), id)
redis.call('PEXPIREAT', key, gc_at(expires))
return 'updated'
