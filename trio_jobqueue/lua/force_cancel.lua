#!lua flags=allow-oom
-- force_cancel.lua: cancel.lua, and a processing job is removed too (its token is fenced).
-- KEYS: standard 1-13, 14 the control channel {tag}:ctl, 15 this call's reply cache
--       {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 job id, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: {tag}:j:<id> and {tag}:b:<id> (GET; DEL), queue, delayed, scheduled and
--          leases (ZREM: O(log n) wherever the job is), completed/failed (ZREM of an
--          expired record), the reply cache (GET, and SET when something was removed: a
--          resent call still answers the first call's status), publishes "cancelled" (on
--          {tag}:ev and the job's outcome channel) and, for a processing job, the same
--          event on {tag}:ctl for the worker holding it. A corrupt record is removed.
-- Returns: "cancelled" | "cancelling" | "not_found" | "completed"
local earlier = cached_reply(KEYS[15], ARGV[3])
if earlier then
  return earlier
end
local id = ARGV[2]
local j = live(KEYS[1] .. id, id)
if not j then
  return 'not_found'
end
local attempts, reply = 0, 'cancelled'
if j ~= CORRUPT then
  if j[ST] == 'x' then
    return 'not_found'
  end
  if j[ST] == 'c' then
    return 'completed'
  end
  attempts = j[ATT]
  if j[ST] == 'p' then
    reply = 'cancelling'
  end
end
for _, index in ipairs({KEYS[8], KEYS[11], KEYS[13], KEYS[2]}) do
  redis.call('ZREM', index, id)
end
del_job(id)
emit('cancelled', id, attempts)
if reply == 'cancelling' then
  publish(KEYS[14], EVENTS[#EVENTS])
end
flush()
return remember(KEYS[15], reply, ARGV[4])
