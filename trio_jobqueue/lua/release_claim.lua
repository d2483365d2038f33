#!lua flags=allow-oom
-- release_claim.lua: give back every job a claim still holds (its reply never reached
-- the worker, or the worker was cancelled before it took the jobs): each goes back to
-- the HEAD of the ready order with its attempt un-consumed, as a shutdown release does.
-- KEYS: standard 1-13, 14 the claim's record {tag}:claim:<nonce> (see claim.lua)
-- ARGV: 1 clock offset, 2 the claim's nonce
-- Touches: the claim record (GET, DEL), {tag}:j:<id> (GET, SET), leases (ZREM),
--          seq (HINCRBY h), queue (ZADD), wake (tokens), publishes "requeued".
-- Returns: how many jobs were released.
local record = redis.call('GET', KEYS[14])
if not record then
  return 0
end
local ids = cmsgpack.unpack(record)
local released = 0
-- In reverse, so that the first claimed is at the head again.
for n = #ids, 1, -1 do
  local id = ids[n]
  local key = KEYS[1] .. id
  local token = ARGV[2] .. ':' .. n
  local j = read_job(key)
  if j and j ~= CORRUPT and j[ST] == 'p' and j[TOK] == token then
    release_job(key, id, j, token)
    released = released + 1
  end
end
redis.call('DEL', KEYS[14])
flush()
return released
