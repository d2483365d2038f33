#!lua
-- reap.lua: recover up to `limit` jobs whose lease expired, in (deadline, id bytes)
-- order; the caller calls again while the reply says more are due.
-- KEYS: standard 1-13, 14 the fence's lock hash {tag}:lock:<name> (any key of the tag
--       when unfenced), 15 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 the Stalled error (bytes), 3 "1" if fenced, 4 fence owner,
--       5 fence epoch, 6 limit, 7 "1" when resent after a lost reply, 8 cache ms
-- Touches: leases (ZRANGEBYSCORE ... LIMIT/ZREM), {tag}:j:<id> (GET, SET, PEXPIREAT),
--          {tag}:b:<id> (a large error is never written: Stalled is short; PEXPIREAT),
--          seq (HINCRBY t), queue (ZADD at the tail), wake (tokens), failed (ZADD),
--          the lock hash (HMGET), the reply cache (GET; SET when jobs were reaped, so
--          that a resent call reports them), publishes "stalled"/"failed".
-- Returns: {"fenced"} | {"ok", next_deadline or "", now, "1" if more are due else
--          "0", then per job: id, attempt, 0|1 failed}
local earlier = cached_reply(KEYS[15], ARGV[7])
if earlier then
  return earlier
end
if ARGV[3] == '1' and not fence_ok(KEYS[14], ARGV[4], ARGV[5]) then
  return {'fenced'}
end
local out = {'ok', '', fmt(NOW), '0'}
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(NOW), 'LIMIT', 0,
  tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  local key = KEYS[1] .. id
  redis.call('ZREM', KEYS[2], id)
  local j = read_job(key)
  if j and j ~= CORRUPT and j[ST] == 'p' then
    local attempt = j[ATT]
    local failed = 0
    if attempt >= j[MAX] then
      failed = 1
      set_blob(j, id, ERR, ARGV[2])
      finish(key, id, j, 'x', j[TTL], nil)
      emit('stalled', id, attempt, nil, ARGV[2])
      emit('failed', id, attempt, nil, ARGV[2])
    else
      to_failing(key, id, j, ARGV[2], 0, nil)
      emit('stalled', id, attempt, nil, ARGV[2])
    end
    out[#out + 1] = id
    out[#out + 1] = tostring(attempt)
    out[#out + 1] = tostring(failed)
  end
end
local first = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if first[2] then
  out[2] = first[2]
  if tonumber(first[2]) <= NOW then
    out[4] = '1'
  end
end
flush()
if #out > 4 then
  return remember(KEYS[15], out, ARGV[8])
end
return out
