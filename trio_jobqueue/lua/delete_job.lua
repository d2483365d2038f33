#!lua flags=allow-oom
-- delete_job.lua: remove a job in any state but processing, with its result and error.
-- KEYS: standard 1-13, 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 job id, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: {tag}:j:<id> and {tag}:b:<id> (GET; DEL), queue, delayed, scheduled,
--          completed and failed (ZREM), the reply cache, publishes "cancelled" for a job
--          that had not finished.
-- Returns: "deleted" | "not_found" | "processing"
local earlier = cached_reply(KEYS[14], ARGV[3])
if earlier then
  return earlier
end
local id = ARGV[2]
local j = live(KEYS[1] .. id, id)
if not j then
  return 'not_found'
end
if j ~= CORRUPT and j[ST] == 'p' then
  return 'processing'
end
delete_job(id, j)
flush()
return remember(KEYS[14], 'deleted', ARGV[4])
