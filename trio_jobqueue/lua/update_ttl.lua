#!lua flags=allow-oom
-- update_ttl.lua: restart a terminal job's TTL from now.
-- KEYS: standard 1-13 (touches 1, 3, 4, 6)
-- ARGV: 1 clock offset, 2 job id, 3 ttl seconds
-- Touches: {tag}:j:<id> (GET, SET, PEXPIREAT), {tag}:b:<id> (PEXPIREAT), completed or
--          failed (ZADD).
-- Returns: "updated" | "not_found" | "not_terminal" | "missing_payload"
local id = ARGV[2]
local key = KEYS[1] .. id
local j = live(key, id)
if not j then
  return 'not_found'
end
if j == CORRUPT or (j[ST] ~= 'c' and j[ST] ~= 'x') then
  return 'not_terminal'
end
local field, index = RES, KEYS[3]
if j[ST] == 'x' then
  field, index = ERR, KEYS[4]
end
if not j[field] then
  return 'missing_payload'
end
local ttl = tonumber(ARGV[3])
j[TTL], j[EXP] = ttl, NOW + ttl
write_job(key, j)
redis.call('ZADD', index, fmt(j[EXP]), id)
expire_job(key, id, j)
return 'updated'
