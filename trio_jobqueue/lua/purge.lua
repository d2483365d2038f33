#!lua flags=allow-oom
-- purge.lua: physically remove up to ARGV[2] expired terminal records per index.
-- KEYS: standard 1-13 (touches 1, 3, 4, 6), 14 this call's reply cache {tag}:rc:<nonce>
-- ARGV: 1 clock offset, 2 limit, 3 "1" when resent after a lost reply, 4 cache ms
-- Touches: completed/failed (ZRANGEBYSCORE, ZREM), {tag}:j:<id> and {tag}:b:<id> (DEL),
--          the reply cache.
-- Returns: how many records were removed.
local earlier = cached_reply(KEYS[14], ARGV[3])
if earlier then
  return earlier
end
local count = purge(tonumber(ARGV[2]))
if count > 0 then
  return remember(KEYS[14], count, ARGV[4])
end
return count
