#!lua flags=allow-oom
-- complete.lua: processing -> completed, fenced by the claim token.
-- KEYS: settle 1-7 (the first seven standard keys)
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 result (bytes), 5 ttl seconds,
--       6 "1" when this is a retry after a lost reply (then a job this token already
--       settled reports "ok")
-- Touches: {tag}:j:<id> (GET, SET, PEXPIREAT), {tag}:b:<id> (HSET of a large result,
--          HDEL of a large error, PEXPIREAT), leases (ZREM), completed (ZADD),
--          publishes "completed" (on {tag}:ev and {tag}:done:<id>).
-- Returns: "ok" | "stale"
local id = ARGV[2]
local j, key, reply = settle_begin(id, ARGV[3], ARGV[6])
if reply then
  return reply
end
set_blob(j, id, RES, ARGV[4])
set_blob(j, id, ERR, nil)
finish(key, id, j, 'c', tonumber(ARGV[5]), ARGV[3])
emit('completed', id, j[ATT], ARGV[4], nil)
flush()
return 'ok'
