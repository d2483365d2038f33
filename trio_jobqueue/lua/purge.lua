-- purge.lua: physically remove up to ARGV[2] expired terminal records per index.
-- KEYS: standard 1-7 (touches 1, 5, 6)
-- ARGV: 1 clock offset, 2 limit
-- Touches: completed/failed (ZREM), {tag}:j:<id> (DEL).
-- Returns: how many records were removed.
return purge(tonumber(ARGV[2]))
