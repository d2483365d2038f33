#!lua flags=allow-oom
-- release.lua: processing -> queued/failing at the HEAD, un-consuming the attempt.
-- KEYS: standard 1-13
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (GET, SET), leases (ZREM), seq (HINCRBY h), queue (ZADD at the
--          head), wake (a token), publishes "requeued".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local j, key, reply = settle_begin(id, ARGV[3], ARGV[4])
if reply then
  return reply
end
release_job(key, id, j, ARGV[3])
flush()
return 'ok'
