#!lua
-- reap.lua: recover every job whose lease expired, in (deadline, id bytes) order.
-- KEYS: standard 1-7, 8 the fence's lock hash {tag}:lock:<name> (any key of the tag
--       when unfenced), 9 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 the Stalled error (bytes), 3 "1" if fenced, 4 fence owner,
--       5 fence epoch, 6 "1" when resent after a lost reply, 7 cache ms
-- Touches: leases (ZRANGEBYSCORE/ZREM), {tag}:j:<id> (HSET, PEXPIREAT), ready (RPUSH),
--          failed (ZADD), the lock hash (HMGET), the reply cache (GET; SET when jobs
--          were reaped, so that a resent call reports them), publishes
--          "stalled"/"failed".
-- Returns: {"fenced"} | {"ok", next_deadline or "", now, then per job: id, attempt,
--          0|1 failed}
local earlier = cached_reply(KEYS[9], ARGV[6])
if earlier then
  return earlier
end
if ARGV[3] == '1' then
  local l = redis.call('HMGET', KEYS[8], 'owner', 'epoch', 'exp')
  if l[1] ~= ARGV[4] or l[2] ~= ARGV[5] or (not l[3]) or tonumber(l[3]) <= NOW then
    return {'fenced'}
  end
end
local out = {'ok', '', fmt(NOW)}
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(NOW))
for _, id in ipairs(ids) do
  local key = KEYS[1] .. id
  redis.call('ZREM', KEYS[4], id)
  local f = redis.call('HMGET', key, 'state', 'attempts', 'max', 'ttl')
  if f[1] == 'processing' then
    local attempt = tonumber(f[2])
    local failed = 0
    if attempt >= tonumber(f[3]) then
      failed = 1
      redis.call('HSET', key, 'error', ARGV[2])
      finish(key, id, 'failed', tonumber(f[4]), nil)
      emit('stalled', id, attempt, nil, ARGV[2])
      emit('failed', id, attempt, nil, ARGV[2])
    else
      to_failing(key, id, ARGV[2], 0, nil)
      emit('stalled', id, attempt, nil, ARGV[2])
    end
    out[#out + 1] = id
    out[#out + 1] = tostring(attempt)
    out[#out + 1] = tostring(failed)
  end
end
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then
  out[2] = first[2]
end
flush()
if #out > 3 then
  return remember(KEYS[9], out, ARGV[7])
end
return out
