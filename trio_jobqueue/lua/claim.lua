#!lua
-- claim.lua: promote due delayed jobs, then claim up to `limit` ready jobs (FIFO).
-- KEYS: standard 1-13, 14 this claim's record {tag}:claim:<nonce>, 15.. records of
--       earlier claims of this storage whose replies arrived (deleted: no longer needed)
-- ARGV: 1 clock offset, 2 worker id, 3 limit, 4 lease seconds, 5 the claim's nonce
--       (tokens are "<nonce>:<n>"), 6 "1" when resent after a lost reply
-- Touches: delayed (ZRANGE/ZCOUNT/ZRANGEBYSCORE/ZREM, at most PROMOTE_BATCH due jobs),
--          seq (HMGET/HINCRBY/HSET/HDEL: promotion reservations), queue
--          (ZADD of promoted jobs, ZPOPMIN), {tag}:j:<id> (GET, SET), {tag}:b:<id>
--          (HGET of a large payload), leases (ZADD, of LEASES_PIN too: see _lib.lua), quarantine (RPUSH of the ids of
--          corrupt records, which are left untouched for inspection), wake (LTRIM of as
--          many tokens as jobs claimed, DEL of the stale tokens when the queue is empty,
--          RPUSH when promoted jobs are left for others), the claim record (SET ... PX lease: the claimed ids, so that a call
--          resent after a lost reply gets the same jobs back instead of claiming more,
--          and so that jobs of a reply lost for good can be released), completed/failed
--          and their records (purge of expired entries), publishes "started" events.
-- Also removes expired terminal records, at most PURGE_BATCH per index (completed,
-- failed, and their records and blobs).
-- Bounded: at most PROMOTE_BATCH promotions, PURGE_BATCH removals per index and
-- limit + SKIP_MAX entries looked at, whatever the backlog.
-- Paused (field "paused" of seq): claims nothing and returns {now, "paused"}.
-- Returns: {now, next_due or "" (given whenever fewer than `limit` were claimed), then
--          per claim: id, payload, attempt, max_attempts, created, token, lease_until,
--          result_ttl}
local PROMOTE_BATCH = 500
local SKIP_MAX = 500
local PURGE_BATCH = 100
for i = 15, #KEYS do
  redis.call('DEL', KEYS[i])
end
local out = {fmt(NOW), ''}

local function hand_out(id, j, token, lease_until)
  local i = #out
  out[i + 1] = id
  out[i + 2] = get_blob(j, id, PAY)
  out[i + 3] = j[ATT]
  out[i + 4] = j[MAX]
  out[i + 5] = j[CRE]
  out[i + 6] = token
  out[i + 7] = lease_until
  out[i + 8] = fmt(j[TTL])
end

if ARGV[6] == '1' then
  local record = redis.call('GET', KEYS[14])
  if record then
    -- The first call ran and its reply was lost: hand back what it claimed (and still
    -- holds), with the same tokens and attempts. Others may be ready: "next due now"
    -- (the claimer asks again rather than sleep).
    out[2] = fmt(NOW)
    for n, id in ipairs(cmsgpack.unpack(record)) do
      local token = ARGV[5] .. ':' .. n
      local j = read_job(KEYS[1] .. id)
      if j and j ~= CORRUPT and j[ST] == 'p' and j[TOK] == token then
        hand_out(id, j, token, redis.call('ZSCORE', KEYS[2], id))
      end
    end
    return out
  end
end

if redis.call('HEXISTS', KEYS[9], 'paused') == 1 then
  out[2] = 'paused'  -- the queue is paused: nothing is promoted or claimed
  return out
end
-- Expired terminal records go here, not in every enqueue: one claim call serves a
-- batch of jobs, and records only become terminal where workers claim.
purge(PURGE_BATCH)
local promoted, next_due = promote_due(PROMOTE_BATCH)
local limit = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local lease_until = fmt(NOW + lease)
local claimed = {}
local budget = limit + SKIP_MAX
while #claimed < limit and budget > 0 do
  local popped = redis.call('ZPOPMIN', KEYS[8], math.min(limit - #claimed, budget))
  if #popped == 0 then
    break
  end
  for k = 1, #popped, 2 do
    budget = budget - 1
    local id = popped[k]
    local key = KEYS[1] .. id
    local j = read_job(key)
    if j == CORRUPT then
      -- A corrupt record: quarantined so that it can never block the queue.
      redis.call('RPUSH', KEYS[12], id)
    elseif j and (j[ST] == 'q' or j[ST] == 'f') then
      claimed[#claimed + 1] = id
      if #claimed == 1 then
        redis.call('ZADD', KEYS[2], 'NX', '+inf', LEASES_PIN)
      end
      local token = ARGV[5] .. ':' .. #claimed
      j[ST], j[ATT], j[WRK], j[TOK] = 'p', j[ATT] + 1, ARGV[2], token
      write_job(key, j)
      redis.call('ZADD', KEYS[2], lease_until, id)
      hand_out(id, j, token, lease_until)
      emit('started', id, j[ATT])
    end
    -- Anything else is a stale or foreign entry: dropped.
  end
end
if #claimed > 0 then
  redis.call('SET', KEYS[14], cmsgpack.pack(claimed), 'PX',
    string.format('%d', math.min(math.ceil(lease * 1000), 9007199254740992)))
  -- The jobs taken need no wake-up any more: drop as many waiting tokens.
  redis.call('LTRIM', KEYS[10], #claimed, -1)
end
if budget <= 0 then
  pending_wakes = 1  -- stopped early (stale entries): someone must look again
elseif #claimed < limit then
  -- The queue is empty: waiting tokens are stale (their jobs are taken).
  redis.call('DEL', KEYS[10])
elseif promoted > 0 then
  -- Promoted jobs are left for other claimers: wake as many (no event woke them).
  pending_wakes = math.min(promoted, redis.call('ZCARD', KEYS[8]))
end
if #claimed < limit then
  -- Every ready job is taken: the next due time tells the claimer how long it may
  -- sleep (also after a claim that took some, so that it need not ask again).
  next_due = next_due or redis.call('ZRANGE', KEYS[11], 0, 0, 'WITHSCORES')
  if next_due[2] then
    out[2] = next_due[2]
  end
end
flush()
return out
