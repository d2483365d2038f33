#!lua flags=allow-oom
-- status.lua: one job's record, or nil when absent or expired.
-- KEYS: standard 1-13 (touches 1, 2, 3, 4, 6, 11)
-- ARGV: 1 clock offset, 2 job id
-- Touches: {tag}:j:<id> (GET; DEL when expired), {tag}:b:<id> (HGET of a large result
--          or error; DEL when expired), delayed/leases (ZSCORE: due time, lease
--          deadline), completed/failed (ZREM when expired).
-- Returns: nil | {"corrupt"} | {state, created, attempts, max, ttl, result, error,
--          finished, expires, due, worker, lease, priority, progress}
local id = ARGV[2]
local key = KEYS[1] .. id
local j = live(key, id)
if not j then
  return nil
end
if j == CORRUPT then
  return {'corrupt'}
end
return job_status(id, j)
