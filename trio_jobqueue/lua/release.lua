#!lua flags=allow-oom
-- release.lua: processing -> queued/failing at the HEAD, un-consuming the attempt.
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (HSET), leases (ZREM), ready (LPUSH), publishes "requeued".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local key, attempts, reply = settle_begin(id, ARGV[3], ARGV[4])
if reply then
  return reply
end
release_job(key, id, ARGV[3])
flush()
return 'ok'
