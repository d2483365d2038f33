#!lua flags=allow-oom
-- complete.lua: processing -> completed, fenced by the claim token.
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 result (bytes), 5 ttl seconds,
--       6 "1" when this is a retry after a lost reply (then a job this token already
--       settled reports "ok")
-- Touches: {tag}:j:<id> (HSET, PEXPIREAT), leases (ZREM), completed (ZADD),
--          publishes "completed".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local key, attempts, reply = settle_begin(id, ARGV[3], ARGV[6])
if reply then
  return reply
end
redis.call('HSET', key, 'result', ARGV[4])
redis.call('HDEL', key, 'error')
finish(key, id, 'completed', tonumber(ARGV[5]), ARGV[3])
emit('completed', id, attempts, ARGV[4], nil)
flush()
return 'ok'
