#!lua flags=allow-oom
-- unregister_worker.lua: remove one worker's registration at once.
-- KEYS: 1 the registration hash {tag}:w:<worker id>, 2 the registry index {tag}:workers
-- ARGV: 1 clock offset, 2 worker id
-- Touches: the registration (DEL), the index (ZREM).
-- Returns: 1 if a live registration was removed, else 0.
local expires = redis.call('HGET', KEYS[1], 'exp')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if expires and tonumber(expires) > NOW then
  return 1
end
return 0
