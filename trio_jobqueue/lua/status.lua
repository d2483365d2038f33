#!lua flags=allow-oom
-- status.lua: one job's record, or nil when absent or expired.
-- KEYS: standard 1-7 (only 1, 5, 6 are touched)
-- ARGV: 1 clock offset, 2 job id
-- Touches: {tag}:j:<id> (HMGET; DEL when expired), completed/failed (ZREM when expired).
-- Returns: nil | {state, created, attempts, max, ttl, result, error, finished, expires,
--          due, worker, lease}
local id = ARGV[2]
local key = KEYS[1] .. id
if not live(key, id) then
  return nil
end
return redis.call('HMGET', key, 'state', 'created', 'attempts', 'max', 'ttl', 'result',
  'error', 'finished', 'expires', 'due', 'worker', 'lease')
