-- _lib.lua: shared prelude, prepended by RedisStorage to every other script in this
-- directory before SCRIPT LOAD (Redis has no `require`). Not a transition of its own.
--
-- Conventions of every script that includes it:
--   line 1   "#!lua" with the script's flags (moved before this prelude when loading):
--            scripts that may grow memory (enqueue, claim, reap) have none, so Redis
--            refuses them as a whole above maxmemory (and on a read-only replica or
--            under MISCONF) before anything is written; settlements, heartbeats,
--            deletions and locks are "allow-oom", so a handler's success is stored and
--            leases are kept while new work is refused.
--   ARGV[1]  the storage's testing clock offset in seconds (see Storage.advance_clock)
--   "standard" KEYS (scripts say when they use them):
--   KEYS[1]  job hash prefix "{tag}:j:" (the raw job id is appended; same hash tag)
--   KEYS[2]  {tag}:ready      list of ready ids (head = next to claim)
--   KEYS[3]  {tag}:delayed    zset id -> due time (failing jobs waiting out a delay)
--   KEYS[4]  {tag}:leases     zset id -> lease deadline (processing jobs)
--   KEYS[5]  {tag}:completed  zset id -> expiry time
--   KEYS[6]  {tag}:failed     zset id -> expiry time
--   KEYS[7]  {tag}:ev         pub/sub channel for the namespace's events
--
-- Time: server TIME + ARGV[1], in float epoch seconds, written with %.17g so that
-- values round-trip exactly. Terminal job hashes get PEXPIREAT(expiry + GC_MARGIN) in
-- real server time purely as garbage collection; visibility is decided by comparing the
-- stored `expires` field with NOW, so an expired record is invisible at once.
--
-- Events: each script publishes at most one message on KEYS[7] carrying all the events
-- of the transition, each encoded binary-safely as
--   "<kind> <attempt> <#id> <#result or -1> <#error or -1>\n" .. id .. result .. error
-- where a result longer than INLINE_RESULT_MAX bytes is left out and its length given
-- as -2 ("the job has a result: read it"), so large results are never published.
-- plus, so that each listener gets only what it needs, the terminal events
-- (completed/failed/cancelled) again on KEYS[7] .. ":done" (for job watchers) and a
-- bare "1" on KEYS[7] .. ":wake" when a job became claimable (for blocked claims).

local OFFSET = tonumber(ARGV[1])
local NOW
do
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000 + OFFSET
end
local GC_MARGIN = 60

local function fmt(x)
  return string.format('%.17g', x)
end

-- Redis expiry (ms, server clock) for a record the storage clock expires at
-- `expires`: an integer string, never "1e+18" (PEXPIREAT takes integers only), capped
-- at 2^53 ms (about 285,000 years) so that any valid TTL works.
local function gc_at(expires)
  local ms = math.floor((expires - OFFSET + GC_MARGIN) * 1000)
  if ms > 9007199254740992 then
    ms = 9007199254740992
  end
  return string.format('%d', ms)
end

-- Reply cache of the scripts whose resent call (after a lost reply) could not tell
-- what the first call did: the first call stores its reply under a per-call key (a
-- declared KEY, `{tag}:rc:<nonce>`) for a short time; a resent call returns it.
local function cached_reply(key, resent)
  if resent == '1' then
    local raw = redis.call('GET', key)
    if raw then
      return cmsgpack.unpack(raw)
    end
  end
  return nil
end

local function remember(key, reply, ttl_ms)
  redis.call('SET', key, cmsgpack.pack(reply), 'PX', ttl_ms)
  return reply
end

local INLINE_RESULT_MAX = 32768  -- equal to trio_jobqueue.storage._core.INLINE_RESULT_MAX
local EVENTS = {}
local DONE = {}
local WAKE = false
local WAKE_KINDS = {enqueued = true, failing = true, requeued = true, stalled = true}
local DONE_KINDS = {completed = true, failed = true, cancelled = true}

local function emit(kind, id, attempt, result, err)
  local rl, el = -1, -1
  if result and #result > INLINE_RESULT_MAX then
    rl, result = -2, ''
  elseif result then
    rl = #result
  else
    result = ''
  end
  if err then el = #err else err = '' end
  local record = kind .. ' ' .. tostring(attempt) .. ' ' .. #id .. ' ' .. rl .. ' '
    .. el .. '\n' .. id .. result .. err
  EVENTS[#EVENTS + 1] = record
  if DONE_KINDS[kind] then
    DONE[#DONE + 1] = record
  end
  if WAKE_KINDS[kind] then
    WAKE = true
  end
end

local function flush()
  if #EVENTS > 0 then
    redis.call('PUBLISH', KEYS[7], table.concat(EVENTS))
  end
  if #DONE > 0 then
    redis.call('PUBLISH', KEYS[7] .. ':done', table.concat(DONE))
  end
  if WAKE then
    redis.call('PUBLISH', KEYS[7] .. ':wake', '1')
  end
end

-- The state of a live job, or nil. An expired record is forgotten on sight.
local function live(key, id)
  local f = redis.call('HMGET', key, 'state', 'expires')
  if not f[1] then
    return nil
  end
  if f[2] and tonumber(f[2]) <= NOW then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    return nil
  end
  return f[1]
end

-- processing -> completed/failed: clear the lease, set expiry, index for purge/GC.
local function finish(key, id, state, ttl, token)
  local expires = NOW + ttl
  redis.call('HSET', key, 'state', state, 'finished', fmt(NOW), 'expires', fmt(expires),
    'ttl', fmt(ttl), 'settled', token or '')
  redis.call('HDEL', key, 'token', 'worker', 'lease')
  redis.call('ZREM', KEYS[4], id)
  local index = KEYS[5]
  if state == 'failed' then index = KEYS[6] end
  redis.call('ZADD', index, fmt(expires), id)
  redis.call('PEXPIREAT', key, gc_at(expires))
end

-- processing -> failing, ready at the tail (delay <= 0) or due after `delay` seconds.
local function to_failing(key, id, err, delay, token)
  redis.call('HSET', key, 'state', 'failing', 'error', err, 'settled', token or '')
  redis.call('HDEL', key, 'token', 'worker', 'lease')
  redis.call('ZREM', KEYS[4], id)
  if delay > 0 then
    local due = NOW + delay
    redis.call('HSET', key, 'due', fmt(due))
    redis.call('ZADD', KEYS[3], fmt(due), id)
  else
    redis.call('HDEL', key, 'due')
    redis.call('RPUSH', KEYS[2], id)
  end
end

-- Move every due delayed job to the ready tail, in (due, id bytes) order.
local function promote_due()
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(NOW))
  if #due == 0 then
    return
  end
  for _, id in ipairs(due) do
    local key = KEYS[1] .. id
    if redis.call('EXISTS', key) == 1 then
      redis.call('HDEL', key, 'due')
      redis.call('RPUSH', KEYS[2], id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(NOW))
end

-- Physically drop up to `limit` expired terminal records; returns how many.
local function purge(limit)
  local count = 0
  for _, index in ipairs({KEYS[5], KEYS[6]}) do
    local ids = redis.call('ZRANGEBYSCORE', index, '-inf', fmt(NOW), 'LIMIT', 0, limit)
    for _, id in ipairs(ids) do
      local key = KEYS[1] .. id
      local exp = redis.call('HGET', key, 'expires')
      if (not exp) or tonumber(exp) <= NOW then
        redis.call('DEL', key)
      end
      redis.call('ZREM', index, id)
      count = count + 1
    end
  end
  return count
end

-- The prologue of every fenced settlement (complete, fail, retry, release), written
-- once: the ownership check and the idempotency of a call resent after a lost reply.
-- Returns the job's key and attempts when `token` owns the job (processing); otherwise
-- nil, nil and the script's reply: "ok" when this exact token already settled the job
-- and the call is a resend (`resent` == "1": the first call ran, its reply was lost),
-- "stale" otherwise (the lease was reaped, the job cancelled or settled by another
-- token). Use: `local key, attempts, reply = settle_begin(...)` and
-- `if reply then return reply end`.
local function settle_begin(id, token, resent)
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, 'state', 'token', 'attempts', 'settled')
  if f[1] == 'processing' and f[2] == token then
    return key, tonumber(f[3]), nil
  end
  if f[4] == token and resent == '1' then
    return nil, nil, 'ok'
  end
  return nil, nil, 'stale'
end

-- processing -> queued/failing at the HEAD, un-consuming the attempt (shutdown, a
-- cancelled claim, a claim whose reply was lost for good).
local function release_job(key, id, token)
  local attempts = tonumber(redis.call('HGET', key, 'attempts')) - 1
  local state = 'failing'
  if attempts == 0 then
    state = 'queued'
  end
  redis.call('HSET', key, 'state', state, 'attempts', attempts, 'settled', token)
  redis.call('HDEL', key, 'token', 'worker', 'lease', 'due')
  redis.call('ZREM', KEYS[4], id)
  redis.call('LPUSH', KEYS[2], id)
  emit('requeued', id, attempts + 1)
end
