#!lua
-- enqueue_many.lua: enqueue.lua for every job of a batch, in order, in one step.
-- KEYS: standard 1-13
-- ARGV: 1 clock offset, 2 the call's nonce (each job's is "<nonce>:<position>": a resent
--       call reports the jobs it accepted as accepted again), then per job 7 values: id, payload, max_attempts,
--       result_ttl, priority, run_at ("" for none), delay ("" for none)
-- Touches: as enqueue.lua, for each job (purge of expired entries once, at most 100 per
--          index); publishes one message with every "enqueued" event.
-- Returns: per job 3 values: status, existing state or "", cached result or ""
purge(100)
local out = {}
for i = 3, #ARGV, 7 do
  local reply = enqueue_one(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
    ARGV[2] .. ':' .. i, tonumber(ARGV[i + 4]), due_time(ARGV[i + 5], ARGV[i + 6]))
  out[#out + 1] = reply[1]
  out[#out + 1] = reply[2] or ''
  out[#out + 1] = reply[3] or ''
end
flush()
return out
