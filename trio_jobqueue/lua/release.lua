#!lua flags=allow-oom
-- release.lua: processing -> queued/failing at the HEAD, un-consuming the attempt.
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (HSET), leases (ZREM), ready (LPUSH), publishes "requeued".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local key = KEYS[1] .. id
local attempts, settled = owned(key, ARGV[3])
if not attempts then
  if settled and ARGV[4] == '1' then
    return 'ok'
  end
  return 'stale'
end
release_job(key, id, ARGV[3])
flush()
return 'ok'
