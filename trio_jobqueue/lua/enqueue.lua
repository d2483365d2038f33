#!lua
-- enqueue.lua: accept a new job unless a live record holds its id (dedup).
-- KEYS: standard 1-13
-- ARGV: 1 clock offset, 2 job id, 3 payload (bytes), 4 max_attempts, 5 result_ttl,
--       6 request nonce (a retried call with the same nonce reports its status again),
--       7 priority, 8 run_at ("" for none), 9 delay seconds ("" for none: due at
--       NOW + delay)
-- Touches: {tag}:j:<id> (GET; SET), {tag}:b:<id> (HSET of a large payload),
--          seq (HINCRBY t), queue (ZADD) or, for a run_at after now, delayed and
--          scheduled (ZADD), wake (RPUSH a token; for a scheduled job only when it
--          is due before every other delayed one), publishes "enqueued". An expired
--          record under the id is removed; other expired records are left to claims
--          (see claim.lua) and purge_expired.
-- Returns: {"queued"} | {"scheduled"} | {"duplicate", state}
--          | {"completed", "completed", result}
local reply = enqueue_one(ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
  tonumber(ARGV[7]), due_time(ARGV[8], ARGV[9]))
flush()
return reply
