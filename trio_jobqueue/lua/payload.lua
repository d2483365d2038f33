#!lua flags=allow-oom
-- payload.lua: one job's payload, or nil when absent or expired.
-- KEYS: standard 1-13 (touches 1, 3, 4, 6)
-- ARGV: 1 clock offset, 2 job id
-- Touches: {tag}:j:<id> (GET; DEL when expired), {tag}:b:<id> (HGET of a large payload;
--          DEL when expired), completed/failed (ZREM when expired).
-- Returns: nil | {"corrupt"} | the payload bytes
local id = ARGV[2]
local j = live(KEYS[1] .. id, id)
if not j then
  return nil
end
if j == CORRUPT then
  return {'corrupt'}
end
return get_blob(j, id, PAY)
