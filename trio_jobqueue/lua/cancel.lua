-- cancel.lua: remove a queued or failing job (record and message).
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 job id
-- Touches: {tag}:j:<id> (DEL), ready (LREM), delayed (ZREM), publishes "cancelled".
-- Returns: "cancelled" | "not_found" | "processing" | "completed"
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
return 'cancelled'
