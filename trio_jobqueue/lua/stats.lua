#!lua flags=no-writes
-- stats.lua: counts of live jobs per state, O(log n) whatever the backlog. Read-only:
-- a delayed retry whose time has come counts as queued but is not moved (only claim
-- moves it), so calling stats never changes the claim order.
-- KEYS: standard 1-13 (reads 2, 3, 4, 8, 11, 13)
-- ARGV: 1 clock offset
-- Touches: queue, leases, delayed, completed, failed, scheduled (ZCOUNT); writes
--          nothing.
-- Returns: {queued, delayed, processing, completed, failed, scheduled}
local now = fmt(NOW)
local after = '(' .. now
local scheduled = redis.call('ZCOUNT', KEYS[13], after, '+inf')
return {
  redis.call('ZCARD', KEYS[8]) + redis.call('ZCOUNT', KEYS[11], '-inf', now),
  redis.call('ZCOUNT', KEYS[11], after, '+inf') - scheduled,
  redis.call('ZCOUNT', KEYS[2], '-inf', '(+inf'),  -- not LEASES_PIN
  redis.call('ZCOUNT', KEYS[3], after, '+inf'),
  redis.call('ZCOUNT', KEYS[4], after, '+inf'),
  scheduled,
}
