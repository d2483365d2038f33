#!lua flags=allow-oom
-- delete_jobs.lua: delete up to `limit` jobs of one state, as delete_job.lua does, looking
-- at a bounded window of the state's index from a cursor.
-- KEYS: standard 1-13, 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 state (scheduled, queued, failing, completed, failed), 3 limit,
--       4 cursor ("<phase>:<offset>", "" at first), 5 "1" when resent after a lost reply,
--       6 cache ms
-- The indexes: scheduled -> scheduled; completed/failed -> completed/failed (live
-- entries); queued -> queue (state q only); failing -> queue (state f), then delayed
-- (state f: not the scheduled ones). A window is `limit` + SCAN_MAX entries; the entries
-- kept (another state, or beyond the limit) are skipped by the next call's offset.
-- Touches: the index (ZRANGE/ZRANGEBYSCORE), the records (GET; DEL) and every index (ZREM),
--          the reply cache, publishes "cancelled" for jobs that had not finished.
-- Returns: {deleted, next cursor or "" when the state's indexes are exhausted}
local SCAN_MAX = 1000
local earlier = cached_reply(KEYS[14], ARGV[5])
if earlier then
  return earlier
end
local state, limit = ARGV[2], tonumber(ARGV[3])
local CODES = {scheduled = 's', queued = 'q', failing = 'f', completed = 'c', failed = 'x'}
local sources = {
  scheduled = {KEYS[13]}, queued = {KEYS[8]}, failing = {KEYS[8], KEYS[11]},
  completed = {KEYS[3]}, failed = {KEYS[4]},
}
local code = CODES[state]
local phase, offset = 1, 0
if ARGV[4] ~= '' then
  local sep = string.find(ARGV[4], ':', 1, true)
  phase, offset = tonumber(string.sub(ARGV[4], 1, sep - 1)), tonumber(string.sub(ARGV[4], sep + 1))
end
local index = sources[state][phase]
local ids
if index == KEYS[3] or index == KEYS[4] then
  ids = redis.call('ZRANGEBYSCORE', index, '(' .. fmt(NOW), '+inf', 'LIMIT', offset,
    limit + SCAN_MAX)
else
  ids = redis.call('ZRANGE', index, offset, offset + limit + SCAN_MAX - 1)
end
local deleted, looked = 0, 0
for _, id in ipairs(ids) do
  if deleted == limit then
    break
  end
  looked = looked + 1
  local j = live(KEYS[1] .. id, id)
  if j and j ~= CORRUPT and j[ST] == code then
    delete_job(id, j)
    deleted = deleted + 1
  end
end
local cursor = ''
if deleted == limit or #ids == limit + SCAN_MAX then
  cursor = phase .. ':' .. (offset + looked - deleted)
elseif sources[state][phase + 1] then
  cursor = (phase + 1) .. ':0'
end
flush()
return remember(KEYS[14], {deleted, cursor}, ARGV[6])
