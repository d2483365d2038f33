#!lua flags=allow-oom
-- retry.lua: processing -> failing (attempt stays consumed), fenced by the token.
-- KEYS: standard 1-13
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 error (bytes), 5 delay seconds,
--       6 "1" when this is a retry after a lost reply
-- Touches: {tag}:j:<id> (GET, SET), {tag}:b:<id> (a large error), leases (ZREM),
--          queue (ZADD at the tail) and wake (a token) for delay 0, else delayed (ZADD;
--          a token when due before every other delayed job), seq (HINCRBY t),
--          publishes "failing".
-- Returns: "ok" | "stale"
local id = ARGV[2]
local j, key, reply = settle_begin(id, ARGV[3], ARGV[6])
if reply then
  return reply
end
to_failing(key, id, j, ARGV[4], tonumber(ARGV[5]), ARGV[3])
emit('failing', id, j[ATT], nil, ARGV[4])
flush()
return 'ok'
