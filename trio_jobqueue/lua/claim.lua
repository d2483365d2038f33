-- claim.lua: promote due delayed jobs, then claim up to `limit` ready jobs (FIFO).
-- KEYS: standard 1-7
-- ARGV: 1 clock offset, 2 worker id, 3 limit, 4 lease seconds, 5 token base
--       (tokens are "<base>:<n>", so the caller's random base makes them unique)
-- Touches: delayed (ZRANGEBYSCORE/ZREMRANGEBYSCORE), ready (RPUSH/LPOP),
--          {tag}:j:<id> (HSET), leases (ZADD), {tag}:ready:quarantine (RPUSH of the ids of
--          corrupt job hashes, which are left untouched for inspection), publishes
--          "started" events.
-- Returns: {now, next_due or "", then per claim: id, payload, attempt, max_attempts,
--          created, token, lease_until, result_ttl}
promote_due()
local limit = tonumber(ARGV[3])
local lease_until = fmt(NOW + tonumber(ARGV[4]))
local out = {fmt(NOW), ''}
local n = 0
while n < limit do
  local id = redis.call('LPOP', KEYS[2])
  if not id then
    break
  end
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, 'state', 'payload', 'attempts', 'max', 'created', 'ttl')
  local claimable = (f[1] == 'queued' or f[1] == 'failing')
  if claimable and not (f[2] and tonumber(f[3]) and tonumber(f[4]) and tonumber(f[5])
      and tonumber(f[6])) then
    -- A corrupt record: quarantined so that it can never block the queue.
    redis.call('RPUSH', KEYS[2] .. ':quarantine', id)
    claimable = false
  end
  -- Anything else is a stale or foreign entry: dropped from the list.
  if claimable then
    n = n + 1
    local attempt = tonumber(f[3]) + 1
    local token = ARGV[5] .. ':' .. n
    redis.call('HSET', key, 'state', 'processing', 'attempts', attempt, 'worker', ARGV[2],
      'token', token, 'lease', lease_until)
    redis.call('ZADD', KEYS[4], lease_until, id)
    local i = #out
    out[i + 1] = id
    out[i + 2] = f[2]
    out[i + 3] = tostring(attempt)
    out[i + 4] = f[4]
    out[i + 5] = f[5]
    out[i + 6] = token
    out[i + 7] = lease_until
    out[i + 8] = f[6]
    emit('started', id, attempt)
  end
end
if n == 0 then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] then
    out[2] = first[2]
  end
end
flush()
return out
