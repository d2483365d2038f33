-- _lib.lua: shared prelude of every other script in this directory. RedisStorage loads
-- them all as one Redis function library (FUNCTION LOAD): this file once, then each
-- script's body wrapped in a function of its own, registered as a Redis function (see
-- _library in storage/_redis_common.py). The library's top level runs once, when it is
-- loaded; a call runs only `begin` and the script's body. Not a transition of its own.
--
-- Conventions of every script that includes it:
--   line 1   "#!lua" with the script's flags (the flags of its Redis function):
--            scripts that may grow memory (enqueue, claim, reap) have none, so Redis
--            refuses them as a whole above maxmemory (and on a read-only replica or
--            under MISCONF) before anything is written; settlements, heartbeats,
--            deletions and locks are "allow-oom", so a handler's success is stored and
--            leases are kept while new work is refused.
--   ARGV[1]  the storage's testing clock offset in seconds (see Storage.advance_clock),
--            followed by ",classic" when the server has no sharded pub/sub (see flush)
-- Upper-case numeric locals are constants: the loader inlines them (see
-- _inline_constants in storage/_redis_common.py).
--   "standard" KEYS (NamespaceKeys.standard(); scripts say which they use), in an order
--   that lets the settlements most calls are (complete, fail) send only KEYS[1..7]
--   (NamespaceKeys.settle()): every key they use comes first.
--   KEYS[1]  {tag}:j:         prefix of the job records (the raw job id is appended)
--   KEYS[2]  {tag}:leases     zset id -> lease deadline (processing jobs)
--   KEYS[3]  {tag}:completed  zset id -> expiry time
--   KEYS[4]  {tag}:failed     zset id -> expiry time
--   KEYS[5]  {tag}:ev         channel: every event of the namespace
--   KEYS[6]  {tag}:b:         prefix of the large-blob hashes (the raw job id appended)
--   KEYS[7]  {tag}:done:      prefix of the outcome channels (a shard of the id appended)
--   KEYS[8]  {tag}:queue      zset id -> ready score (see "Ready order"): claimable jobs
--   KEYS[9]  {tag}:seq        hash: the ready order's counters (t, h, and pu pn pe), and
--            the field "paused" while the queue is paused
--   KEYS[10] {tag}:wake       list: wake-up tokens for blocked claims (see flush)
--   KEYS[11] {tag}:delayed    zset id -> due time (scheduled jobs, and failing jobs
--            waiting out a retry delay)
--   KEYS[12] {tag}:ready:quarantine  list: ids of corrupt records a claim skipped
--   KEYS[13] {tag}:scheduled zset id -> run_at: the scheduled jobs (also in `delayed`,
--            which promotes them; this index tells them from delayed retries)
-- `leases` also holds LEASES_PIN, scored +inf, from the first claim on (and is therefore
-- never deleted): a member longer than zset-max-listpack-value (64 bytes by default)
-- keeps the set in Redis's skiplist encoding. A sorted set as small as `leases` usually
-- is would otherwise be a listpack, where every ZADD scans the whole set and parses each
-- float score: 12 us per ZADD at 100 processing jobs, against 0.4 us in a skiplist. It
-- is no job id (0xFF never occurs in UTF-8); readers of `leases` skip it (scores below
-- '(+inf', or the member itself).
-- Per-job keys are the declared prefix plus the id: the prefix ends after the hash tag,
-- so they are in the slot of every declared key.
--
-- Time: server TIME + the offset, in float epoch seconds, written with %.17g so that
-- values round-trip exactly. Terminal records get PEXPIREAT(expiry + GC_MARGIN) in real
-- server time purely as garbage collection; visibility is decided by comparing the
-- stored expiry with NOW, so an expired record is invisible at once.

-- The state of one call: set by `begin` (at the end of this file) before every call.
local KEYS, ARGV, OFFSET, SHARDED, NOW
local GC_MARGIN = 60
local LEASES_PIN = '\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255'
  .. '\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255'
  .. '\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255'
  .. '\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255'
  .. '\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255\255'  -- 80 bytes

local function fmt(x)
  if x == math.floor(x) and x > -1e15 and x < 1e15 then
    return string.format('%d', x)  -- exact, and much cheaper than %.17g
  end
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

-- Job records ----------------------------------------------------------------------
--
-- `{tag}:j:<id>` is a string: a MessagePack array (cmsgpack) of NFIELDS positions,
-- absent fields false (one byte each; every record keeps all positions, so the table
-- packs as an array with no hole to fill first). One small string per job and no
-- field names: a queued job with a 100-byte payload takes about 250 bytes (a hash with
-- named fields takes ~700 once a value exceeds hash-max-listpack-value).
local ST, ATT, MAX, CRE, TTL, NONCE, PAY, WRK, TOK, SETL, RES, ERR, FIN, EXP, PRIO =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
local NFIELDS = 15
-- Running-job control: PROG (16) is the last progress written (JSON bytes, at most
-- 4 KiB; see progress.lua), set only while processing and kept until the record goes.
-- Records without progress leave it out (15 positions, as before).
local PROG = 16
--   ST     state code: s scheduled, q queued, p processing, f failing, c completed,
--          x failed
--   ATT    attempts started        MAX    max attempts
--   CRE    created (time), kept formatted: it is only ever read out
--   TTL    result TTL (s)          NONCE  the accepted enqueue call's nonce
--   PAY    payload                 WRK    worker id (processing)
--   TOK    claim token (processing)
--   SETL   token of the last settlement (makes a resent settlement idempotent)
--   RES    result (completed)      ERR    last error (failing/failed)
--   FIN    finished (time)         EXP    expiry (time; terminal jobs only)
--   PRIO   priority (records written before priorities have 14 fields: priority 0)
-- PAY, RES and ERR hold the bytes, or `true` when longer than BLOB_INLINE_MAX: those
-- live in the hash {tag}:b:<id> (fields p, r, e) and are written once, so that the
-- transitions, which rewrite the record, never copy a large payload or result.
-- The lease deadline and the due time are not in the record: they are the job's score
-- in `leases` and `delayed`.
local STATE = {s = 'scheduled', q = 'queued', p = 'processing', f = 'failing',
  c = 'completed', x = 'failed'}
local BLOB_INLINE_MAX = 16384
local BLOB_FIELD = {[PAY] = 'p', [RES] = 'r', [ERR] = 'e'}
local CORRUPT = {}  -- what read_job returns for bytes that are not a job record

-- The record in the bytes `raw` of a job key (CORRUPT when they are not one).
local function decode_job(raw)
  local ok, j = pcall(cmsgpack.unpack, raw)
  if not ok or type(j) ~= 'table' or not STATE[j[ST]] or type(j[ATT]) ~= 'number'
      or type(j[MAX]) ~= 'number' or type(j[CRE]) ~= 'string'
      or type(j[TTL]) ~= 'number' or (type(j[PAY]) ~= 'string' and j[PAY] ~= true) then
    return CORRUPT
  end
  if type(j[PRIO]) ~= 'number' then
    j[PRIO] = 0
  end
  return j
end

local function read_job(key)
  local raw = redis.pcall('GET', key)
  if raw == false then
    return nil
  end
  if type(raw) ~= 'string' then
    return CORRUPT  -- WRONGTYPE: foreign data under the job's key
  end
  return decode_job(raw)
end

local function write_job(key, j)
  redis.call('SET', key, cmsgpack.pack(j))
end

-- Field PAY, RES or ERR of job `id` := `value` (bytes, or nil to clear it).
local function set_blob(j, id, i, value)
  if value and #value > BLOB_INLINE_MAX then
    redis.call('HSET', KEYS[6] .. id, BLOB_FIELD[i], value)
    j[i] = true
  else
    if j[i] == true then
      redis.call('HDEL', KEYS[6] .. id, BLOB_FIELD[i])
    end
    j[i] = value or false
  end
end

-- The bytes of field PAY, RES or ERR (false when absent).
local function get_blob(j, id, i)
  if j[i] == true then
    return redis.call('HGET', KEYS[6] .. id, BLOB_FIELD[i])
  end
  return j[i] or false
end

local function del_job(id)
  redis.call('DEL', KEYS[1] .. id, KEYS[6] .. id)
end

-- Garbage collection of a terminal record (and its blobs) by Redis itself.
local function expire_job(key, id, j)
  local at = gc_at(j[EXP])
  redis.call('PEXPIREAT', key, at)
  if j[PAY] == true or j[RES] == true or j[ERR] == true then
    redis.call('PEXPIREAT', KEYS[6] .. id, at)
  end
end

-- Ready order ----------------------------------------------------------------------
--
-- `queue` is a sorted set scored (-priority) * 2^40 + seq, so ZPOPMIN takes the highest
-- priority first and FIFO among equals, and claim, cancel at any position and a release
-- at the head are O(log n). seq comes from the counters in {tag}:seq: `t` counts up
-- from 1 for the tail (enqueue, a retry without delay, a stalled job, promotion), `h`
-- counts down from -1 for the head (a release: before every job of its priority, the
-- latest release first). Scores are exact doubles while |seq| < 2^39 and |priority|
-- <= 4095 (see next_seq for the counters' restart); the queue accepts -1000..1000.
local PRIO_STEP = 1099511627776  -- 2^40
local SEQ_RESTART = 1073741824  -- 2^30

local function ready_score(seq, priority)
  return fmt(seq - priority * PRIO_STEP)
end

-- Events and wake-ups ----------------------------------------------------------------
--
-- Each script publishes at most one message on KEYS[5] carrying all the events of the
-- transition, each encoded binary-safely as
--   "<kind> <attempt> <#id> <#result or -1> <#error or -1>\n" .. id .. result .. error
-- where a result longer than INLINE_RESULT_MAX bytes is left out and its length given
-- as -2 ("the job has a result: read it"), so large results are never published.
-- A job's terminal events (completed/failed/cancelled) also go to one of 256 outcome
-- channels, {tag}:done:<first two hex digits of sha1(id)>, which only watchers of jobs of
-- that shard subscribe to (NamespaceKeys.done_channel). Both are sharded
-- channels (SPUBLISH, which Redis Cluster routes to the slot's node) unless ARGV[1] says
-- "classic" (then PUBLISH).
-- Every job made claimable pushes a wake-up token on {tag}:wake (at most WAKE_CAP
-- waiting): a blocked claimer's BLPOP takes it, so one enqueue wakes one idle process.
local INLINE_RESULT_MAX = 32768  -- equal to trio_jobqueue.storage._core.INLINE_RESULT_MAX
local WAKE_CAP = 64
local EVENTS, DONE, pending_wakes  -- emptied by `begin` for every call
local DONE_KINDS = {completed = true, failed = true, cancelled = true}

local function publish(channel, message)
  if SHARDED then
    redis.call('SPUBLISH', channel, message)
  else
    redis.call('PUBLISH', channel, message)
  end
end

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
    DONE[#DONE + 1] = id
    DONE[#DONE + 1] = record
  end
end

-- emit('enqueued', id, 0) at a fraction of its cost (the bulk enqueue's hot path): the
-- record's head is made once per id length, and head and id are joined by flush only.
local ENQUEUED_HEAD = {}
local function emit_enqueued(id)
  local n = #id
  local head = ENQUEUED_HEAD[n]
  if not head then
    head = 'enqueued 0 ' .. n .. ' -1 -1\n'
    ENQUEUED_HEAD[n] = head
  end
  local last = #EVENTS
  EVENTS[last + 1] = head
  EVENTS[last + 2] = id
end

local function flush()
  if #EVENTS > 0 then
    publish(KEYS[5], table.concat(EVENTS))
  end
  for i = 1, #DONE, 2 do
    publish(KEYS[7] .. string.sub(redis.sha1hex(DONE[i]), 1, 2), DONE[i + 1])
  end
  if pending_wakes > 0 then
    local tokens = {}
    for i = 1, math.min(pending_wakes, WAKE_CAP) do
      tokens[i] = '1'
    end
    if redis.call('RPUSH', KEYS[10], unpack(tokens)) > WAKE_CAP then
      redis.call('LTRIM', KEYS[10], 0, WAKE_CAP - 1)
    end
  end
end

-- The next sequence number of the tail (`field` t, step 1) or of the head (h, -1).
-- Past 2^30 a counter restarts when the queue is empty (and no promotion is under way),
-- so scores stay exact with priorities whatever the queue's lifetime.
local function next_seq(field, step)
  local seq = redis.call('HINCRBY', KEYS[9], field, step)
  if seq * step > SEQ_RESTART and redis.call('ZCARD', KEYS[8]) == 0
      and redis.call('HEXISTS', KEYS[9], 'pu') == 0 then
    redis.call('HSET', KEYS[9], 't', 0, 'h', 0, field, step)
    seq = step
  end
  return seq
end

local function push_tail(id, priority)
  redis.call('ZADD', KEYS[8], ready_score(next_seq('t', 1), priority), id)
  pending_wakes = pending_wakes + 1
end

local function push_head(id, priority)
  redis.call('ZADD', KEYS[8], ready_score(next_seq('h', -1), priority), id)
  pending_wakes = pending_wakes + 1
end

-- A job due at `due` (later than NOW) into `delayed`. It wakes one blocked claimer only
-- when it is due before every other delayed job: a blocked claimer sleeps until the next
-- due time its claim returned (or less), so it finds any job due later without a
-- wake-up, and a wake-up would only cost it a claim that finds nothing.
local function push_delayed(id, due)
  local head = redis.call('ZRANGE', KEYS[11], 0, 0, 'WITHSCORES')
  redis.call('ZADD', KEYS[11], fmt(due), id)
  if not head[2] or due < tonumber(head[2]) then
    pending_wakes = pending_wakes + 1
  end
end

-- Transitions shared by several scripts -----------------------------------------------

-- The record of a live job (CORRUPT for foreign bytes), or nil. An expired record is
-- forgotten on sight.
-- `j` (a record of job `id`, CORRUPT or nil), or nil when it is expired: an expired
-- record is forgotten on sight.
local function unexpired(id, j)
  if j and j ~= CORRUPT and j[EXP] and j[EXP] <= NOW then
    del_job(id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
    return nil
  end
  return j
end

local function live(key, id)
  return unexpired(id, read_job(key))
end

-- processing -> completed ('c') / failed ('x'): clear the lease, set the expiry, index
-- for purge/GC.
local function finish(key, id, j, state, ttl, token)
  j[ST], j[TTL], j[FIN], j[EXP] = state, ttl, NOW, NOW + ttl
  j[SETL], j[TOK], j[WRK] = token or false, false, false
  write_job(key, j)
  redis.call('ZREM', KEYS[2], id)
  local index = KEYS[3]
  if state == 'x' then index = KEYS[4] end
  redis.call('ZADD', index, fmt(j[EXP]), id)
  expire_job(key, id, j)
end

-- processing -> failing, ready at the tail (delay <= 0) or due after `delay` seconds.
local function to_failing(key, id, j, err, delay, token)
  j[ST], j[SETL], j[TOK], j[WRK] = 'f', token or false, false, false
  set_blob(j, id, ERR, err)
  write_job(key, j)
  redis.call('ZREM', KEYS[2], id)
  if delay > 0 then
    push_delayed(id, NOW + delay)
  else
    push_tail(id, j[PRIO])
  end
end

-- processing -> queued/failing at the HEAD, un-consuming the attempt (shutdown, a
-- cancelled claim, a claim whose reply was lost for good).
local function release_job(key, id, j, token)
  local attempts = j[ATT] - 1
  j[ST] = 'f'
  if attempts == 0 then
    j[ST] = 'q'
  end
  j[ATT], j[SETL], j[TOK], j[WRK] = attempts, token, false, false
  write_job(key, j)
  redis.call('ZREM', KEYS[2], id)
  push_head(id, j[PRIO])
  emit('requeued', id, attempts + 1)
end

-- Move due delayed jobs (and scheduled ones, which become queued) to the ready tail of
-- their priority in (due, id bytes) order, at most `limit` per call. When more are due than that, the sequence numbers of all of them are
-- reserved at once ({tag}:seq fields pu = the cut-off time, pn = next reserved, pe =
-- last reserved) and the next calls place the rest with them: jobs enqueued meanwhile
-- still come after every job that was due when the promotion began, exactly as if all
-- had moved at once. Returns how many moved, and when none was due the head of
-- `delayed` (ZRANGE ... WITHSCORES: the next due time, if any).
local function promote_due(limit)
  local first = redis.call('ZRANGE', KEYS[11], 0, 0, 'WITHSCORES')
  if not first[2] or tonumber(first[2]) > NOW then
    return 0, first  -- nothing due (also: no promotion under way)
  end
  local moved = 0
  while moved < limit do
    local cut = redis.call('HMGET', KEYS[9], 'pu', 'pn', 'pe')
    local upto, nxt, last = cut[1], tonumber(cut[2]), tonumber(cut[3])
    if not upto then
      local n = redis.call('ZCOUNT', KEYS[11], '-inf', fmt(NOW))
      if n == 0 then
        break
      end
      last = redis.call('HINCRBY', KEYS[9], 't', n)
      nxt = last - n + 1
      upto = fmt(NOW)
    end
    local budget = limit - moved
    local ids = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', upto, 'LIMIT', 0, budget)
    for _, id in ipairs(ids) do
      redis.call('ZREM', KEYS[11], id)
      local seq = nxt
      if seq > last then
        seq = redis.call('HINCRBY', KEYS[9], 't', 1)  -- a late arrival (clock jump)
      end
      nxt = nxt + 1
      local key = KEYS[1] .. id
      local j = read_job(key)
      local priority = 0
      if j and j ~= CORRUPT then
        priority = j[PRIO]
        if j[ST] == 's' then
          j[ST] = 'q'
          write_job(key, j)
          redis.call('ZREM', KEYS[13], id)
        end
      end
      -- (a missing or corrupt record goes on too: claim drops or quarantines it)
      redis.call('ZADD', KEYS[8], ready_score(seq, priority), id)
    end
    moved = moved + #ids
    if #ids == budget then
      -- Perhaps more due than the budget: the rest keep their reserved places.
      redis.call('HSET', KEYS[9], 'pu', upto, 'pn', nxt, 'pe', last)
      break
    end
    if not cut[1] then
      break  -- every due job moved
    end
    -- A reserved batch is done; jobs that became due since may follow it.
    redis.call('HDEL', KEYS[9], 'pu', 'pn', 'pe')
  end
  return moved, nil
end

-- A new job (see enqueue.lua): queued at the tail of its priority, or scheduled until
-- `run_at` (a number, or nil) when that is later than NOW. Returns the status.
local function add_job(id, payload, max_attempts, ttl, nonce, priority, run_at)
  local key = KEYS[1] .. id
  local j = {'q', 0, max_attempts, fmt(NOW), ttl, nonce, false, false, false,
    false, false, false, false, false, priority}
  local status = 'queued'
  if run_at and run_at > NOW then
    j[ST], status = 's', 'scheduled'
  end
  set_blob(j, id, PAY, payload)
  write_job(key, j)
  if status == 'scheduled' then
    push_delayed(id, run_at)
    redis.call('ZADD', KEYS[13], fmt(run_at), id)
  else
    push_tail(id, priority)
  end
  emit('enqueued', id, 0)
  return status
end

-- One enqueue (enqueue.lua, enqueue_many.lua): accept job `id` unless a live record
-- holds it. `nonce` identifies the call: a resent call (after a lost reply) finds its own
-- nonce in the record and reports the same status again. Returns the reply of
-- enqueue.lua.
-- The reply of enqueue.lua for job `id` whose id the live record `j` (or CORRUPT)
-- holds: accepted again when `j` carries the call's `nonce` (a resent call), else
-- completed with its cached result, or duplicate.
local function held_reply(id, j, nonce)
  if j == CORRUPT then
    return {'duplicate', 'corrupt'}
  end
  if j[NONCE] == nonce then
    if j[ST] == 's' then
      return {'scheduled'}
    end
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

local function enqueue_one(id, payload, max_attempts, ttl, nonce, priority, run_at)
  local key = KEYS[1] .. id
  local j = live(key, id)
  if j then
    return held_reply(id, j, nonce)
  end
  return {add_job(id, payload, max_attempts, ttl, nonce, priority, run_at)}
end

-- The due time of an enqueue: ARGV-style strings `run_at` and `delay` ("" for none).
local function due_time(run_at, delay)
  if delay ~= '' then
    return NOW + tonumber(delay)
  end
  return tonumber(run_at)
end

-- The reply of status.lua for the live, decodable record `j` of job `id` (also one
-- item of list_jobs.lua): {state, created, attempts, max, ttl, result, error, finished,
-- expires, due, worker, lease, priority, progress}. `known_due`: the due time of a
-- scheduled or failing job when the caller has it already (a score of `delayed` or
-- `scheduled`, the same string), saving a lookup in `delayed` per job.
local function job_status(id, j, known_due)
  local due, lease = false, false
  if j[ST] == 'f' or j[ST] == 's' then
    due = known_due or redis.call('ZSCORE', KEYS[11], id)
  elseif j[ST] == 'p' then
    lease = redis.call('ZSCORE', KEYS[2], id)
  end
  local finished, expires = false, false
  if j[FIN] then finished = fmt(j[FIN]) end
  if j[EXP] then expires = fmt(j[EXP]) end
  return {STATE[j[ST]], j[CRE], j[ATT], j[MAX], fmt(j[TTL]), get_blob(j, id, RES),
    get_blob(j, id, ERR), finished, expires, due, j[WRK] or false, lease, j[PRIO],
    j[PROG] or false}
end

-- Whether lock hash `lock_key` is held by `owner` with `epoch` (strings), unexpired.
local function fence_ok(lock_key, owner, epoch)
  local l = redis.call('HMGET', lock_key, 'owner', 'epoch', 'exp')
  return l[1] == owner and l[2] == epoch and l[3] and tonumber(l[3]) > NOW
end

-- failed -> queued at the tail of its priority, attempts 0, no expiry (the last error
-- stays until it runs): an operator's retry of a failed job.
local function requeue_failed(key, id, j)
  j[ST], j[ATT], j[FIN], j[EXP] = 'q', 0, false, false
  write_job(key, j)
  redis.call('PERSIST', key)
  redis.call('PERSIST', KEYS[6] .. id)
  redis.call('ZREM', KEYS[4], id)
  push_tail(id, j[PRIO])
  emit('enqueued', id, 0)
end

-- Remove a job that is not processing, from every index; `cancelled` unless it had
-- finished (`j` is CORRUPT for a record that does not decode: removed silently).
local function delete_job(id, j)
  for _, index in ipairs({KEYS[8], KEYS[11], KEYS[13], KEYS[3], KEYS[4]}) do
    redis.call('ZREM', index, id)
  end
  del_job(id)
  if j ~= CORRUPT and j[ST] ~= 'c' and j[ST] ~= 'x' then
    emit('cancelled', id, j[ATT])
  end
end

-- Physically drop up to `limit` expired terminal records per index; returns how many.
-- A job is in `completed`/`failed` exactly while its record is terminal, scored by its
-- expiry, so the index alone says which records are expired.
local function purge(limit)
  local count = 0
  for _, index in ipairs({KEYS[3], KEYS[4]}) do
    local ids = redis.call('ZRANGEBYSCORE', index, '-inf', fmt(NOW), 'LIMIT', 0, limit)
    for _, id in ipairs(ids) do
      del_job(id)
      redis.call('ZREM', index, id)
      count = count + 1
    end
  end
  return count
end

-- The prologue of every fenced settlement (complete, fail, retry, release), written
-- once: the ownership check and the idempotency of a call resent after a lost reply.
-- Returns the job's record and key when `token` owns the job (processing); otherwise
-- nil, nil and the script's reply: "ok" when this exact token already settled the job
-- and the call is a resend (`resent` == "1": the first call ran, its reply was lost),
-- "stale" otherwise (the lease was reaped, the job cancelled or settled by another
-- token). Use: `local j, key, reply = settle_begin(...)`, `if reply then return reply end`.
local function settle_begin(id, token, resent)
  local key = KEYS[1] .. id
  local j = read_job(key)
  if j == nil or j == CORRUPT then
    return nil, nil, 'stale'
  end
  if j[ST] == 'p' and j[TOK] == token then
    return j, key, nil
  end
  if j[SETL] == token and resent == '1' then
    return nil, nil, 'ok'
  end
  return nil, nil, 'stale'
end

-- The start of every call: its KEYS and ARGV, the storage clock, no event or wake-up yet.
local function begin(keys, args)
  KEYS, ARGV = keys, args
  OFFSET, SHARDED = tonumber(args[1]), true
  if not OFFSET then
    OFFSET, SHARDED = tonumber(string.sub(args[1], 1, string.find(args[1], ',', 1, true) - 1)), false
  end
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000 + OFFSET
  EVENTS, DONE, pending_wakes = {}, {}, 0
end
