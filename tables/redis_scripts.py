"""The Lua scripts that write a table partition to Redis: each call checks its fence and writes atomically."""

from __future__ import annotations

# One chunk of a write-behind flush. KEYS: data, meta, expires.
# ARGV: offset, expected offset ('' = none), final ('1'/'0'), ttl ms ('0' = none), now ms, number of sets,
# then the sets (key, value[, deadline ms]), then the keys to delete.
# Answers {'ok'|'stale'|'lost', stored offset}:
#   stale: Redis holds a newer offset than this write (another owner wrote after us): nothing written;
#   lost:  Redis no longer holds what this writer last wrote there (restarted empty or from an older file,
#          a key evicted): a delta would be applied to the wrong base, so nothing is written.
# Only the final chunk moves the offset: values of earlier chunks are ahead of it, which is safe because
# each has a changelog record after the stored offset that a replay applies again.
DELTA = """
local data, meta, expires = KEYS[1], KEYS[2], KEYS[3]
local offset = tonumber(ARGV[1])
local expected = ARGV[2]
local ttl = tonumber(ARGV[4])
local head = redis.call('HMGET', meta, 'offset', 'size')
if tonumber(head[2] or '0') ~= redis.call('HLEN', data) then
  return {'lost', head[1] or ''}
end
if head[1] then
  local stored = tonumber(head[1])
  if stored > offset then return {'stale', head[1]} end
  if expected ~= '' and stored < tonumber(expected) then return {'lost', head[1]} end
elseif expected ~= '' then
  return {'lost', ''}
end
local stride = 2
if ttl > 0 then stride = 3 end
local last = 6 + tonumber(ARGV[6]) * stride
for i = 7, last, stride do
  redis.call('HSET', data, ARGV[i], ARGV[i + 1])
  if ttl > 0 then redis.call('ZADD', expires, ARGV[i + 2], ARGV[i]) end
end
for i = last + 1, #ARGV do
  redis.call('HDEL', data, ARGV[i])
  if ttl > 0 then redis.call('ZREM', expires, ARGV[i]) end
end
if ttl > 0 then
  local old = redis.call('ZRANGEBYSCORE', expires, '-inf', ARGV[5], 'LIMIT', 0, 1000)
  for _, field in ipairs(old) do
    redis.call('HDEL', data, field)
    redis.call('ZREM', expires, field)
  end
end
redis.call('HSET', meta, 'size', redis.call('HLEN', data))
if ARGV[3] == '1' then redis.call('HSET', meta, 'offset', ARGV[1]) end
if ttl > 0 then
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
end
return {'ok', ARGV[1]}
"""

# One chunk of a full rewrite. KEYS: data, meta, expires, rewrite data, rewrite expires.
# ARGV: offset, first ('1'/'0'), final ('1'/'0'), ttl ms ('0' = none), number of sets, then the sets.
# Chunks fill the writer's own rewrite keys; the final one renames them over data/expires and sets the
# offset, so a reader sees the old partition or the new one, never a half-written one.
REWRITE = """
local data, meta, expires, new_data, new_expires = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local stored = redis.call('HGET', meta, 'offset')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  redis.call('DEL', new_data, new_expires)
  return {'stale', stored}
end
if ARGV[2] == '1' then redis.call('DEL', new_data, new_expires) end
local ttl = tonumber(ARGV[4])
local stride = 2
if ttl > 0 then stride = 3 end
local last = 5 + tonumber(ARGV[5]) * stride
for i = 6, last, stride do
  redis.call('HSET', new_data, ARGV[i], ARGV[i + 1])
  if ttl > 0 then redis.call('ZADD', new_expires, ARGV[i + 2], ARGV[i]) end
end
if ARGV[3] ~= '1' then
  -- a writer that dies mid-rewrite leaves its rewrite keys behind: let them go by themselves
  redis.call('PEXPIRE', new_data, 3600000)
  redis.call('PEXPIRE', new_expires, 3600000)
  return {'ok', stored or ''}
end
if redis.call('EXISTS', new_data) == 1 then
  redis.call('RENAME', new_data, data)
  redis.call('PERSIST', data)
else
  redis.call('DEL', data)
end
if redis.call('EXISTS', new_expires) == 1 then
  redis.call('RENAME', new_expires, expires)
  redis.call('PERSIST', expires)
else
  redis.call('DEL', expires)
end
redis.call('DEL', meta)
redis.call('HSET', meta, 'offset', ARGV[1], 'size', redis.call('HLEN', data))
if ttl > 0 then
  for _, key in ipairs({data, meta, expires}) do redis.call('PEXPIRE', key, ttl) end
end
return {'ok', ARGV[1]}
"""
