"""Atomic job state changes as Lua scripts, so the API's cancel and the worker's start never race.

Each script takes KEYS[1] = the job hash and returns 1 when it changed the state, 0 when it did not.
Both the API (redis.asyncio) and the workers (redis) run them with `EVAL`.
"""

from __future__ import annotations

# ARGV: now (unix seconds), cancel reason (optional: client | deadline)
CANCEL_IF_QUEUED = """
if redis.call('HGET', KEYS[1], 'state') == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'finished_at', ARGV[1])
  if ARGV[2] and ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[2]) end
  return 1
end
return 0
"""

# ARGV: now, worker name. A job already running is taken over only by the caller holding its lock
# (the worker checks the lock first), so redelivery after a crash can resume it.
START_IF_RUNNABLE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2])
  if not redis.call('HGET', KEYS[1], 'started_at') then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
  end
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  return 1
end
return 0
"""

# ARGV: final state, now, error ('' for none), cancel reason (optional). Terminal states are never
# overwritten.
FINISH_IF_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' or state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
  if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[4]) end
  return 1
end
return 0
"""

# Hand a running job back to the queue (its worker is shutting down). ARGV: none.
REQUEUE_IF_RUNNING = """
if redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'queued')
  return 1
end
return 0
"""

# Store bytes of a job only while its record exists, so a copy made after DELETE cannot outlive it.
# KEYS: the job hash, the key to set. ARGV: value, TTL in seconds. Returns 1 when set.
SET_IF_JOB_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

# Start an attempt of one webhook event. Only the task that first took the event (its Celery task id,
# kept across retries and redeliveries) attempts it, so an event announced twice is sent by one chain.
# KEYS: the job hash, its webhooks hash. ARGV: webhook id, task id, body (kept from the first attempt),
# TTL. Returns {attempt number, body, status}: attempt -1 when the job is gone, 0 when not ours or done.
START_WEBHOOK_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', ''} end
local field = ARGV[1] .. ':'
local owner = redis.call('HGET', KEYS[2], field .. 'task')
local status = redis.call('HGET', KEYS[2], field .. 'status')
if (owner and owner ~= ARGV[2]) or status == 'delivered' or status == 'failed' then
  return {0, '', status or ''}
end
redis.call('HSETNX', KEYS[2], field .. 'task', ARGV[2])
redis.call('HSETNX', KEYS[2], field .. 'status', 'pending')
redis.call('HSETNX', KEYS[2], field .. 'body', ARGV[3])
local attempt = redis.call('HINCRBY', KEYS[2], field .. 'attempts', 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {attempt, redis.call('HGET', KEYS[2], field .. 'body'), 'pending'}
"""

# One webhook delivery attempt, recorded only while the job exists (a deleted job keeps no trace), and an
# event marked delivered at most once. KEYS: the job hash, its webhooks hash, its deliveries list, the
# stats hash. ARGV: webhook id, the attempt as JSON, new status ('' = unchanged), TTL, stats field.
# A final status drops the body kept for retries. Returns -1 when the job is gone, 0 when the event was
# already delivered, else 1.
RECORD_WEBHOOK_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local field = ARGV[1] .. ':'
if ARGV[3] == 'delivered' and redis.call('HGET', KEYS[2], field .. 'status') == 'delivered' then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], field .. 'status', ARGV[3])
  redis.call('HDEL', KEYS[2], field .. 'body')
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
return 1
"""

# A chain's links in the parent's record (field `children`, comma-separated ids, oldest first), changed
# only while the parent exists. KEYS: the parent's job hash. ARGV: the child's id. Returns 1 when changed.
ADD_CHILD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local children = redis.call('HGET', KEYS[1], 'children')
if children and children ~= '' then children = children .. ',' .. ARGV[1] else children = ARGV[1] end
redis.call('HSET', KEYS[1], 'children', children)
return 1
"""
REMOVE_CHILD = """
local children = redis.call('HGET', KEYS[1], 'children')
if not children then return 0 end
local kept = {}
for id in string.gmatch(children, '[^,]+') do
  if id ~= ARGV[1] then table.insert(kept, id) end
end
redis.call('HSET', KEYS[1], 'children', table.concat(kept, ','))
return 1
"""
