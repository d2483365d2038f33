#!lua
-- enqueue.lua: accept a new job unless a live record holds its id (dedup).
-- KEYS: standard 1-7 (job prefix, ready, delayed, leases, completed, failed, events)
-- ARGV: 1 clock offset, 2 job id, 3 payload (bytes), 4 max_attempts, 5 result_ttl,
--       6 request nonce (a retried call with the same nonce reports "queued" again)
-- Touches: {tag}:j:<id> (HSET), ready (RPUSH), completed/failed (purge of expired
--          entries, at most 1000 each), publishes "enqueued".
-- Returns: {"queued"} | {"duplicate", state} | {"completed", "completed", result}
local id = ARGV[2]
local key = KEYS[1] .. id
purge(1000)
local state = live(key, id)
if state then
  if redis.call('HGET', key, 'nonce') == ARGV[6] then
    return {'queued'}
  end
  if state == 'completed' then
    local result = redis.call('HGET', key, 'result')
    if result then
      return {'completed', state, result}
    end
  end
  return {'duplicate', state}
end
redis.call('DEL', key)
redis.call('HSET', key, 'payload', ARGV[3], 'state', 'queued', 'max', ARGV[4],
  'ttl', ARGV[5], 'created', fmt(NOW), 'attempts', 0, 'nonce', ARGV[6])
redis.call('RPUSH', KEYS[2], id)
emit('enqueued', id, 0)
flush()
return {'queued'}
