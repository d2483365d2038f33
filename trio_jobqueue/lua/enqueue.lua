#!lua
-- enqueue.lua: accept a new job unless a live record holds its id (dedup).
-- KEYS: standard 1-12
-- ARGV: 1 clock offset, 2 job id, 3 payload (bytes), 4 max_attempts, 5 result_ttl,
--       6 request nonce (a retried call with the same nonce reports "queued" again)
-- Touches: {tag}:j:<id> (GET; SET), {tag}:b:<id> (HSET of a large payload),
--          seq (HINCRBY t), queue (ZADD), completed/failed and their records (purge of
--          expired entries, at most 100 each), wake (RPUSH a token), publishes
--          "enqueued".
-- Returns: {"queued"} | {"duplicate", state} | {"completed", "completed", result}
local id = ARGV[2]
local key = KEYS[1] .. id
purge(100)
local j = live(key, id)
if j == CORRUPT then
  return {'duplicate', 'corrupt'}
end
if j then
  if j[NONCE] == ARGV[6] then
    return {'queued'}
  end
  if j[ST] == 'c' then
    local result = get_blob(j, id, RES)
    if result then
      return {'completed', 'completed', result}
    end
  end
  return {'duplicate', STATE[j[ST]]}
end
j = {'q', 0, tonumber(ARGV[4]), fmt(NOW), tonumber(ARGV[5]), ARGV[6], false, false, false,
  false, false, false, false, false}
set_blob(j, id, PAY, ARGV[3])
write_job(key, j)
push_tail(id)
emit('enqueued', id, 0)
flush()
return {'queued'}
