#!lua
-- retry_job.lua: a failed job back to queued (an operator's retry), attempts 0.
-- KEYS: standard 1-13, 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 job id, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: {tag}:j:<id> (GET, SET, PERSIST), {tag}:b:<id> (PERSIST), failed (ZREM), seq
--          (HINCRBY t), queue (ZADD), wake (a token), the reply cache, publishes
--          "enqueued".
-- Returns: "retried" | "not_found" | "not_failed"
local earlier = cached_reply(KEYS[14], ARGV[3])
if earlier then
  return earlier
end
local id = ARGV[2]
local key = KEYS[1] .. id
local j = live(key, id)
if not j then
  return 'not_found'
end
if j == CORRUPT or j[ST] ~= 'x' then
  return 'not_failed'
end
requeue_failed(key, id, j)
flush()
return remember(KEYS[14], 'retried', ARGV[4])
