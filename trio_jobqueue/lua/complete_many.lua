#!lua flags=allow-oom
-- complete_many.lua: several processing -> completed transitions in one call, in order,
-- each fenced by its own claim token exactly as complete.lua (a stale one changes
-- nothing; the others go through).
-- KEYS: settle 1-7 (the first seven standard keys)
-- ARGV: 1 clock offset, then per job four values: job id, token, result (bytes), ttl
--       seconds; last "1" when this is a retry after a lost reply (then a job this token
--       already settled reports "ok")
-- Touches: per job what complete.lua touches: {tag}:j:<id> (GET, SET, PEXPIREAT),
--          {tag}:b:<id> (HSET of a large result, HDEL of a large error, PEXPIREAT),
--          leases (ZREM), completed (ZADD); publishes one message with every "completed"
--          event on {tag}:ev, and each on its job's {tag}:done:<shard>.
-- Bounded: the caller sends at most RedisStorage's COMPLETE_BATCH jobs per call.
-- Returns: per job, in order, "ok" | "stale"
local resent = ARGV[#ARGV]
local out = {}
for i = 2, #ARGV - 1, 4 do
  local id, token, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j, key, reply = settle_begin(id, token, resent)
  if reply then
    out[#out + 1] = reply
  else
    set_blob(j, id, RES, result)
    set_blob(j, id, ERR, nil)
    finish(key, id, j, 'c', tonumber(ARGV[i + 3]), token)
    emit('completed', id, j[ATT], result, nil)
    out[#out + 1] = 'ok'
  end
end
flush()
return out
