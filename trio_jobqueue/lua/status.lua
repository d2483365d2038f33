#!lua flags=allow-oom
-- status.lua: one job's record, or nil when absent or expired.
-- KEYS: standard 1-13 (touches 1, 2, 3, 4, 6, 11)
-- ARGV: 1 clock offset, 2 job id
-- Touches: {tag}:j:<id> (GET; DEL when expired), {tag}:b:<id> (HGET of a large result
--          or error; DEL when expired), delayed/leases (ZSCORE: due time, lease
--          deadline), completed/failed (ZREM when expired).
-- Returns: nil | {"corrupt"} | {state, created, attempts, max, ttl, result, error,
--          finished, expires, due, worker, lease, priority}
local id = ARGV[2]
local key = KEYS[1] .. id
local j = live(key, id)
if not j then
  return nil
end
if j == CORRUPT then
  return {'corrupt'}
end
local due, lease = false, false
if j[ST] == 'f' or j[ST] == 's' then
  due = redis.call('ZSCORE', KEYS[11], id)
elseif j[ST] == 'p' then
  lease = redis.call('ZSCORE', KEYS[2], id)
end
local finished, expires = false, false
if j[FIN] then finished = fmt(j[FIN]) end
if j[EXP] then expires = fmt(j[EXP]) end
return {STATE[j[ST]], j[CRE], j[ATT], j[MAX], fmt(j[TTL]), get_blob(j, id, RES),
  get_blob(j, id, ERR), finished, expires, due, j[WRK] or false, lease, j[PRIO]}
