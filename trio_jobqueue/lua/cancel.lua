#!lua flags=allow-oom
-- cancel.lua: remove a queued or failing job (record and message).
-- KEYS: standard 1-7, 8 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 job id, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: {tag}:j:<id> (DEL), ready (LREM), delayed (ZREM), the reply cache (GET, and
--          SET when cancelled: a resent call still answers "cancelled"), publishes
--          "cancelled".
-- Returns: "cancelled" | "not_found" | "processing" | "completed"
local earlier = cached_reply(KEYS[8], ARGV[3])
if earlier then
  return earlier
end
local id = ARGV[2]
local key = KEYS[1] .. id
local state = live(key, id)
if (not state) or state == 'failed' then
  return 'not_found'
end
if state == 'processing' or state == 'completed' then
  return state
end
local attempts = redis.call('HGET', key, 'attempts')
redis.call('LREM', KEYS[2], 1, id)
redis.call('ZREM', KEYS[3], id)
redis.call('DEL', key)
emit('cancelled', id, attempts)
flush()
return remember(KEYS[8], 'cancelled', ARGV[4])
