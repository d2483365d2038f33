#!lua flags=allow-oom
-- fail.lua: processing -> failed (final), fenced by the claim token.
-- KEYS: settle 1-7 (the first seven standard keys)
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 error (bytes), 5 ttl seconds,
--       6 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (GET, SET, PEXPIREAT), {tag}:b:<id> (HSET of a large error,
--          PEXPIREAT), leases (ZREM), failed (ZADD), publishes "failed" (on {tag}:ev
--          and {tag}:done:<id>).
-- Returns: "ok" | "stale"
local id = ARGV[2]
local j, key, reply = settle_begin(id, ARGV[3], ARGV[6])
if reply then
  return reply
end
set_blob(j, id, ERR, ARGV[4])
finish(key, id, j, 'x', tonumber(ARGV[5]), ARGV[3])
emit('failed', id, j[ATT], nil, ARGV[4])
flush()
return 'ok'
