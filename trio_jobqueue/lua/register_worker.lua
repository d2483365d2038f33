#!lua flags=allow-oom
-- register_worker.lua: insert or refresh one worker's registration; it expires by itself.
-- KEYS: 1 the registration hash {tag}:w:<worker id>, 2 the registry index {tag}:workers
--       (zset worker id -> expiry)
-- ARGV: 1 clock offset, 2 worker id, 3 ttl seconds, 4 the record (bytes, encoded by the
--       client)
-- Touches: the registration (HSET r/seen/exp, PEXPIREAT for garbage collection), the
--          index (ZADD; ZREMRANGEBYSCORE drops the expired entries).
-- Returns: the registration time (storage clock).
local expires = NOW + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(NOW))
redis.call('HSET', KEYS[1], 'r', ARGV[4], 'seen', fmt(NOW), 'exp', fmt(expires))
redis.call('PEXPIREAT', KEYS[1], gc_at(expires))
redis.call('ZADD', KEYS[2], fmt(expires), ARGV[2])
return fmt(NOW)
