#!lua
-- claim.lua: promote due delayed jobs, then claim up to `limit` ready jobs (FIFO).
-- KEYS: standard 1-7, 8 this claim's record {tag}:claim:<nonce>, 9.. records of earlier
--       claims of this storage whose replies arrived (deleted: no longer needed)
-- ARGV: 1 clock offset, 2 worker id, 3 limit, 4 lease seconds, 5 the claim's nonce
--       (tokens are "<nonce>:<n>"), 6 "1" when resent after a lost reply
-- Touches: delayed (ZRANGEBYSCORE/ZREMRANGEBYSCORE), ready (RPUSH/LPOP),
--          {tag}:j:<id> (HSET), leases (ZADD), {tag}:ready:quarantine (RPUSH of the ids of
--          corrupt job hashes, which are left untouched for inspection), the claim
--          record (SET ... PX lease: the claimed ids, so that a call resent after a lost
--          reply gets the same jobs back instead of claiming more, and so that jobs of a
--          reply lost for good can be released), publishes "started" events.
-- Returns: {now, next_due or "", then per claim: id, payload, attempt, max_attempts,
--          created, token, lease_until, result_ttl}
for i = 9, #KEYS do
  redis.call('DEL', KEYS[i])
end
local out = {fmt(NOW), ''}
local FIELDS = {'state', 'payload', 'attempts', 'max', 'created', 'ttl', 'token', 'lease'}

local function hand_out(id, f, token)
  local i = #out
  out[i + 1] = id
  out[i + 2] = f[2]
  out[i + 3] = f[3]
  out[i + 4] = f[4]
  out[i + 5] = f[5]
  out[i + 6] = token
  out[i + 7] = f[8]
  out[i + 8] = f[6]
end

if ARGV[6] == '1' then
  local record = redis.call('GET', KEYS[8])
  if record then
    -- The first call ran and its reply was lost: hand back what it claimed (and still
    -- holds), with the same tokens and attempts.
    for n, id in ipairs(cmsgpack.unpack(record)) do
      local token = ARGV[5] .. ':' .. n
      local f = redis.call('HMGET', KEYS[1] .. id, unpack(FIELDS))
      if f[1] == 'processing' and f[7] == token then
        hand_out(id, f, token)
      end
    end
    return out
  end
end

promote_due()
local limit = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local lease_until = fmt(NOW + lease)
local claimed = {}
while #claimed < limit do
  local id = redis.call('LPOP', KEYS[2])
  if not id then
    break
  end
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, unpack(FIELDS))
  local claimable = (f[1] == 'queued' or f[1] == 'failing')
  if claimable and not (f[2] and tonumber(f[3]) and tonumber(f[4]) and tonumber(f[5])
      and tonumber(f[6])) then
    -- A corrupt record: quarantined so that it can never block the queue.
    redis.call('RPUSH', KEYS[2] .. ':quarantine', id)
    claimable = false
  end
  -- Anything else is a stale or foreign entry: dropped from the list.
  if claimable then
    claimed[#claimed + 1] = id
    local attempt = tostring(tonumber(f[3]) + 1)
    local token = ARGV[5] .. ':' .. #claimed
    redis.call('HSET', key, 'state', 'processing', 'attempts', attempt, 'worker', ARGV[2],
      'token', token, 'lease', lease_until)
    redis.call('ZADD', KEYS[4], lease_until, id)
    f[3], f[8] = attempt, lease_until
    hand_out(id, f, token)
    emit('started', id, attempt)
  end
end
if #claimed > 0 then
  redis.call('SET', KEYS[8], cmsgpack.pack(claimed), 'PX',
    string.format('%d', math.min(math.ceil(lease * 1000), 9007199254740992)))
else
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] then
    out[2] = first[2]
  end
end
flush()
return out
