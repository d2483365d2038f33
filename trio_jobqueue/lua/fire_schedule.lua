#!lua
-- fire_schedule.lua: enqueue the job of one tick of a schedule, at most once per tick.
-- KEYS: standard 1-13, 14 the fence's lock hash {tag}:lock:<name>, 15 the schedule
--       cursors hash {tag}:cursors (schedule id -> last tick fired)
-- ARGV: 1 clock offset, 2 schedule id, 3 tick, 4 job id, 5 payload (bytes),
--       6 max_attempts, 7 result_ttl, 8 priority, 9 fence owner, 10 fence epoch,
--       11 request nonce
-- Touches: the lock hash (HMGET), the cursors hash (HGET, HSET), then as enqueue.lua
--          (the job record and blob, seq, queue, completed/failed purge, wake, "enqueued").
-- Returns: "enqueued" | "duplicate" | "past" | "fenced". A call resent after a lost
--          reply finds the cursor moved and answers "past".
if not fence_ok(KEYS[14], ARGV[9], ARGV[10]) then
  return 'fenced'
end
local schedule, tick = ARGV[2], tonumber(ARGV[3])
local last = redis.call('HGET', KEYS[15], schedule)
if last and tick <= tonumber(last) then
  return 'past'
end
redis.call('HSET', KEYS[15], schedule, fmt(tick))
local id = ARGV[4]
purge(100)
if live(KEYS[1] .. id, id) then
  return 'duplicate'
end
add_job(id, ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[11], tonumber(ARGV[8]), nil)
flush()
return 'enqueued'
