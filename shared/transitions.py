"""Atomic job state changes as Lua scripts, so the API's cancel and the worker's start never race.

Each script takes KEYS[1] = the job hash and returns 1 when it changed the state, 0 when it did not.
Both the API (redis.asyncio) and the workers (redis) run them with `EVAL`.
"""

from __future__ import annotations

# ARGV: now (unix seconds)
CANCEL_IF_QUEUED = """
if redis.call('HGET', KEYS[1], 'state') == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'finished_at', ARGV[1])
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

# ARGV: final state, now, error ('' for none). Terminal states are never overwritten.
FINISH_IF_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' or state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
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
