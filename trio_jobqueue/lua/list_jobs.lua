#!lua flags=no-writes
-- list_jobs.lua: one page of the jobs of one state, in the state's order (see
-- Storage.list_jobs), looking at a bounded window of its index.
-- KEYS: standard 1-13
-- ARGV: 1 clock offset, 2 state, 3 limit, 4 cursor ("" for the first page, else
--       "<phase> <score> <member>": the last entry looked at)
-- The indexes: scheduled -> scheduled (by run_at); queued -> queue (state q; claim
-- order); failing -> queue (state f), then delayed (state f: not the scheduled ones);
-- processing -> leases; completed/failed -> completed/failed from the highest expiry
-- down, stopping at the first expired one. A call looks at most limit + SCAN_MAX entries
-- from the cursor's place (found by ZRANK of its member, or by its score when the member
-- has left the index): O(log n + limit + SCAN_MAX).
-- Touches: the index (ZRANK/ZSCORE/ZCOUNT, ZRANGE ... WITHSCORES), the records (GET) and
--          their blobs (HGET), delayed/leases (ZSCORE); writes nothing.
-- Returns: {next cursor or "", then per job: id, its status.lua reply}
local SCAN_MAX = 1000
local state, limit = ARGV[2], tonumber(ARGV[3])
local CODES = {scheduled = 's', queued = 'q', failing = 'f', processing = 'p',
  completed = 'c', failed = 'x'}
local SOURCES = {
  scheduled = {KEYS[13]}, queued = {KEYS[8]}, failing = {KEYS[8], KEYS[11]},
  processing = {KEYS[2]}, completed = {KEYS[3]}, failed = {KEYS[4]},
}
local code, sources = CODES[state], SOURCES[state]
local reverse = state == 'completed' or state == 'failed'
local phase, score, member = 1, nil, nil
if ARGV[4] ~= '' then
  local a = string.find(ARGV[4], ' ', 1, true)
  local b = string.find(ARGV[4], ' ', a + 1, true)
  phase = tonumber(string.sub(ARGV[4], 1, a - 1))
  score = string.sub(ARGV[4], a + 1, b - 1)
  member = string.sub(ARGV[4], b + 1)
end
local out = {''}
local found, looked = 0, 0
while phase <= #sources do
  local index = sources[phase]
  local by_due = index == KEYS[13] or index == KEYS[11]
  local start = 0
  if member then
    local rank
    if reverse then
      rank = redis.call('ZREVRANK', index, member)
    else
      rank = redis.call('ZRANK', index, member)
    end
    if rank and redis.call('ZSCORE', index, member) == score then
      start = rank + 1
    elseif reverse then
      start = redis.call('ZCOUNT', index, '(' .. score, '+inf')
    else
      start = redis.call('ZCOUNT', index, '-inf', score)
    end
  end
  -- Windows of `limit` entries (most match: the filtered states interleave little), until
  -- the page is full, the budget is spent or the index ends.
  local done = false
  while not done do
    local want = math.min(limit, limit + SCAN_MAX - looked)
    local window
    if reverse then
      window = redis.call('ZRANGE', index, start, start + want - 1, 'REV', 'WITHSCORES')
    else
      window = redis.call('ZRANGE', index, start, start + want - 1, 'WITHSCORES')
    end
    start = start + want
    done = #window < 2 * want
    for i = 1, #window, 2 do
      local id, s = window[i], window[i + 1]
      if id == LEASES_PIN then
        done = true  -- the last entry of `leases`, no job (see _lib.lua)
        break
      end
      if reverse and tonumber(s) <= NOW then
        done = true  -- this entry and every later one expired: the index is done
        break
      end
      looked = looked + 1
      local j = read_job(KEYS[1] .. id)
      if j and j ~= CORRUPT and j[ST] == code then
        out[#out + 1] = id
        -- In `scheduled` and `delayed` the score is the job's due time (as in `delayed`,
        -- which job_status would read again).
        out[#out + 1] = job_status(id, j, by_due and s or nil)
        found = found + 1
      end
      if found == limit or looked == limit + SCAN_MAX then
        -- Perhaps more follow: the next page goes on after this entry.
        out[1] = phase .. ' ' .. s .. ' ' .. id
        return out
      end
    end
  end
  -- This index is done: the next one (if any) from its start.
  phase, score, member = phase + 1, nil, nil
end
return out
