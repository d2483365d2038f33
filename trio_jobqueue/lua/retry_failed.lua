#!lua
-- retry_failed.lua: up to `limit` failed jobs (the soonest to expire first) back to
-- queued, as retry_job.lua does for one.
-- KEYS: standard 1-13, 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 limit, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: failed (ZRANGEBYSCORE ... LIMIT, ZREM), the records (GET, SET, PERSIST), seq,
--          queue, wake, the reply cache, publishes "enqueued".
-- Returns: how many were retried.
local earlier = cached_reply(KEYS[14], ARGV[3])
if earlier then
  return earlier
end
local count = 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. fmt(NOW), '+inf', 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = KEYS[1] .. id
  local j = read_job(key)
  if j and j ~= CORRUPT and j[ST] == 'x' then
    requeue_failed(key, id, j)
    count = count + 1
  else
    redis.call('ZREM', KEYS[4], id)  -- a stale entry
  end
end
flush()
return remember(KEYS[14], count, ARGV[4])
