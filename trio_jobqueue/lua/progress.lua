#!lua flags=allow-oom
-- progress.lua: store a running job's progress, fenced by the claim token.
-- KEYS: settle 1-7 (the first seven standard keys; touches 1 and 5)
-- ARGV: 1 clock offset, 2 job id, 3 token, 4 progress (JSON bytes, at most 4 KiB)
-- Touches: {tag}:j:<id> (GET, SET: the record keeps the value in field PROG, until it
--          goes), publishes "progress" (on {tag}:ev only: it is not an outcome).
-- Returns: "ok" | "stale"
local id = ARGV[2]
local key = KEYS[1] .. id
local j = read_job(key)
if j == nil or j == CORRUPT or j[ST] ~= 'p' or j[TOK] ~= ARGV[3] then
  return 'stale'
end
j[PROG] = ARGV[4]
write_job(key, j)
emit('progress', id, j[ATT], ARGV[4], nil)
flush()
return 'ok'
