-- Store a task's result and publish it to the clients waiting on it, unless a success is
-- stored already: Celery's own rule (a redelivered task that ran twice must not overwrite its
-- first success), read and written in one step instead of a GET, then a SET and a PUBLISH.
-- KEYS[1] = the task's result key, also the channel its waiting clients subscribe to
-- ARGV[1] = the encoded result (JSON); ARGV[2] = seconds it is kept (0: for ever)
-- With a success that acks its message (a fetching pool's process, taskpool/fetching.py):
-- KEYS[2..5] and ARGV[3] are ack.lua's ack's held, deliveries, clock, parked and tag; the
-- message is acked once the result is stored, or found stored.
-- Returns 1 once stored and published; 0 when a success was there (nothing written); -1 when
-- the stored value is not JSON (compressed, or another serializer's): nothing written and
-- nothing acked, the caller decides as Celery does, after decoding it.

local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if not ok or type(meta) ~= 'table' then
    return -1
  end
  if meta['status'] == 'SUCCESS' then
    if KEYS[2] then
      ack(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[3])
    end
    return 0
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if KEYS[2] then
  ack(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[3])
end
return 1
