#!lua flags=allow-oom
-- cancel.lua: remove a scheduled, queued or failing job (record and message).
-- KEYS: standard 1-13, 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 job id, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: {tag}:j:<id> and {tag}:b:<id> (GET; DEL), queue, delayed and scheduled (ZREM: O(log n)
--          wherever the job is), completed/failed (ZREM of an expired record), the
--          reply cache (GET, and SET when cancelled: a resent call still answers
--          "cancelled"), publishes "cancelled". A corrupt record is removed as well.
-- Returns: "cancelled" | "not_found" | "processing" | "completed"
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
local attempts = 0
if j ~= CORRUPT then
  if j[ST] == 'x' then
    return 'not_found'
  end
  if j[ST] == 'p' or j[ST] == 'c' then
    return STATE[j[ST]]
  end
  attempts = j[ATT]
end
redis.call('ZREM', KEYS[8], id)
redis.call('ZREM', KEYS[11], id)
redis.call('ZREM', KEYS[13], id)
del_job(id)
emit('cancelled', id, attempts)
flush()
return remember(KEYS[14], 'cancelled', ARGV[4])
