#!lua flags=allow-oom
-- set_paused.lua: pause (claims take nothing) or resume the queue.
-- KEYS: standard 1-13 (touches 8, 9, 10)
-- ARGV: 1 clock offset, 2 "1" to pause, "0" to resume
-- Touches: seq (HSET/HDEL of the field "paused"), and on resume queue (ZCARD) and wake
--          (a token per ready job, at most WAKE_CAP: blocked claims look again at once).
-- Returns: 1
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[9], 'paused', '1')
else
  if redis.call('HDEL', KEYS[9], 'paused') == 1 then
    pending_wakes = redis.call('ZCARD', KEYS[8])
  end
end
flush()
return 1
