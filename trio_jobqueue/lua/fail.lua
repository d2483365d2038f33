#!lua flags=allow-oom
-- fail.lua: processing -> failed (final), fenced by the claim token.
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 error (bytes), 5 ttl seconds,
--       6 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (HSET, PEXPIREAT), leases (ZREM), failed (ZADD),
--          publishes "failed".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local key, attempts, reply = settle_begin(id, ARGV[3], ARGV[6])
if reply then
  return reply
end
redis.call('HSET', key, 'error', ARGV[4])
finish(key, id, 'failed', tonumber(ARGV[5]), ARGV[3])
emit('failed', id, attempts, nil, ARGV[4])
flush()
return 'ok'
