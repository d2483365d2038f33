#!lua
-- enqueue_many.lua: one chunk of a bulk enqueue: enqueue.lua for every job of the chunk,
-- in order, in one step, with the Redis work batched per chunk (one MGET and one EXISTS
-- of the records, one MSET of the new ones, one HINCRBY of the tail counter, one ZADD of
-- the ready jobs, one published message).
-- KEYS: standard 1-13; 14 the call's chain key {tag}:rc:<call nonce> (the index of its
--       last chunk done)
-- ARGV: 1 clock offset, 2 the chunk's nonce (kept in the records it accepts: a resent
--       chunk reports them as accepted again), 3 the chunk's index in its call (1, 2,
--       ...), 4 the chain key's lifetime (ms; "" for a chunk that is a call of its own:
--       no chain key is read or written), 5 the chunk's default options, 6 the jobs
--       with other options ("<position> <options>;" each, positions from 1), then per
--       job 2 values: id, payload. Options are "<max_attempts> <result_ttl> <priority>
--       <run_at> <delay>" (run_at, delay: "-" for none).
-- Chunks of one call may be pipelined: chunk k runs only once chunk k - 1 is done (the
-- chain key says at least k - 1), else it writes nothing and returns "wait" (its caller
-- sends it again in turn). So the chunks written are always a prefix of the call's.
-- Touches: as enqueue.lua for each job ({tag}:j:<id> MGET, EXISTS, MSET; {tag}:b:<id>;
--          seq HINCRBY t once; queue ZADD once; delayed and scheduled ZADD once; purge
--          of expired entries once, at most 100 per index; wake RPUSH once); the chain
--          key (GET, SET PX); publishes one message with every "enqueued" event.
-- Returns: "wait", or {codes, extras...}: codes has one letter per job, q queued,
--          s scheduled, d duplicate (its extra: the existing state), c completed (its
--          extra: the cached result).
local chunk = tonumber(ARGV[3])
local chained = ARGV[4] ~= ''
local done = 0
if chained then
  done = tonumber(redis.call('GET', KEYS[14]) or '0')
  if done < chunk - 1 then
    return 'wait'
  end
end
purge(100)

local SLICE = 4000  -- values per command (Lua's unpack limit is 8000); even, for pairs

-- redis.call(cmd, [key,] values...) in slices; the replies of MGET/EXISTS combined.
local function sliced(cmd, key, values)
  local total, all = 0, {}
  for i = 1, #values, SLICE do
    local last = math.min(i + SLICE - 1, #values)
    local reply
    if key then
      reply = redis.call(cmd, key, unpack(values, i, last))
    else
      reply = redis.call(cmd, unpack(values, i, last))
    end
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do
        all[#all + 1] = v
      end
    elseif type(reply) == 'number' then
      total = total + reply
    end
  end
  return all, total
end

-- The head of a MessagePack string of `len` bytes, as cmsgpack writes it (len is at most
-- BLOB_INLINE_MAX here).
local function str_head(len)
  if len < 32 then
    return string.char(160 + len)
  elseif len < 256 then
    return '\217' .. string.char(len)
  end
  return '\218' .. string.char(math.floor(len / 256), len % 256)
end

-- Options string -> max_attempts, ttl, priority, due time (nil for none).
local function options(text)
  local a, t, p, r, d = string.match(text, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  local due = nil
  if d ~= '-' then
    due = NOW + tonumber(d)
  elseif r ~= '-' then
    due = tonumber(r)
  end
  return tonumber(a), tonumber(t), tonumber(p), due
end

local nonce = ARGV[2]
local n = (#ARGV - 6) / 2
local keys = {}
for k = 1, n do
  keys[k] = KEYS[1] .. ARGV[2 * k + 5]
end
local others = {}
for k, text in string.gmatch(ARGV[6], '(%d+) ([^;]*);') do
  others[tonumber(k)] = text
end
local raws = sliced('MGET', nil, keys)
-- MGET answers nil for a key of another type too: when EXISTS counts more keys than
-- MGET returned strings, foreign data sits under some job key (read those one by one).
local strings = 0
for k = 1, n do
  if raws[k] then
    strings = strings + 1
  end
end
local _, existing = sliced('EXISTS', nil, keys)
local foreign = existing ~= strings

local d_max, d_ttl, d_prio, d_due = options(ARGV[5])
local created = fmt(NOW)
local held = {}  -- id -> the record holding it, or the state of the job this chunk wrote
local packed_q, packed_s = {}, {}  -- options -> the packed parts of a new record
local writes, ready, ready_prio, due_pairs = {}, {}, {}, {}
local codes, out = {}, {''}
for k = 1, n do
  local base = 2 * k + 5
  local id = ARGV[base]
  local j, later = held[id], true
  if j == nil then
    later = false
    if raws[k] then
      j = unexpired(id, decode_job(raws[k]))
    elseif foreign then
      j = unexpired(id, read_job(keys[k]))
    end
  end
  if type(j) == 'string' then
    codes[k] = 'd'  -- a later occurrence of a job this chunk wrote
    out[#out + 1] = STATE[j]
  elseif j then
    -- A later occurrence of an id in the chunk is a duplicate of the first one, also
    -- when the chunk is resent.
    local reply = held_reply(id, j, later and '' or nonce)
    local code = string.sub(reply[1], 1, 1)
    codes[k] = code
    if code == 'd' then
      out[#out + 1] = reply[2]
    elseif code == 'c' then
      out[#out + 1] = reply[3]
    end
    held[id] = j
  else
    local opts = others[k]
    local max_attempts, ttl, priority, due = d_max, d_ttl, d_prio, d_due
    if opts then
      max_attempts, ttl, priority, due = options(opts)
    else
      opts = ARGV[5]
    end
    local state, cache = 'q', packed_q
    if due and due > NOW then
      state, cache = 's', packed_s
      due_pairs[#due_pairs + 1] = due
      due_pairs[#due_pairs + 1] = id
    else
      ready[#ready + 1] = id
      ready_prio[#ready_prio + 1] = priority
    end
    codes[k] = state
    local payload = ARGV[base + 1]
    if #payload > BLOB_INLINE_MAX then
      local record = {state, 0, max_attempts, created, ttl, nonce, false, false, false,
        false, false, false, false, false, priority}
      set_blob(record, id, PAY, payload)  -- the payload goes to the blob hash
      writes[#writes + 1] = keys[k]
      writes[#writes + 1] = cmsgpack.pack(record)
    else
      -- cmsgpack.pack of the record (see add_job) without building it: the parts before
      -- and after the payload are the same for every job with these options.
      local parts = cache[opts]
      if not parts then
        parts = {string.char(144 + NFIELDS) .. cmsgpack.pack(state, 0, max_attempts, created,
          ttl, nonce), cmsgpack.pack(false, false, false, false, false, false, false, priority)}
        cache[opts] = parts
      end
      writes[#writes + 1] = keys[k]
      writes[#writes + 1] = parts[1] .. str_head(#payload) .. payload .. parts[2]
    end
    held[id] = state
    emit_enqueued(id)
  end
end

if #writes > 0 then
  sliced('MSET', nil, writes)
end
local count = #ready
if count > 0 then
  -- The tail's next `count` sequence numbers at once (see next_seq for the restart).
  local last = redis.call('HINCRBY', KEYS[9], 't', count)
  if last > SEQ_RESTART and redis.call('ZCARD', KEYS[8]) == 0
      and redis.call('HEXISTS', KEYS[9], 'pu') == 0 then
    redis.call('HSET', KEYS[9], 't', count, 'h', 0)
    last = count
  end
  local first, scores = last - count, {}
  for i = 1, count do
    scores[2 * i - 1] = first + i - ready_prio[i] * PRIO_STEP
    scores[2 * i] = ready[i]
  end
  sliced('ZADD', KEYS[8], scores)
  pending_wakes = pending_wakes + count
end
if #due_pairs > 0 then
  sliced('ZADD', KEYS[11], due_pairs)
  sliced('ZADD', KEYS[13], due_pairs)
  -- Wake blocked claimers so that they learn the new due times (see add_job).
  pending_wakes = pending_wakes + #due_pairs / 2
end
flush()
if chained then
  redis.call('SET', KEYS[14], math.max(done, chunk), 'PX', ARGV[4])
end
out[1] = table.concat(codes)
return out
