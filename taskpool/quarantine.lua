-- Keep a message in the quarantine and forget that a consumer holds it, in one step.
-- KEYS[1] = the entries (hash: id -> entry JSON), KEYS[2] = their index (sorted set: id ->
-- when), KEYS[3] = the consumer's held messages (taskpool.liveness), KEYS[4] = the delivery
-- counts, KEYS[5] (where the message was recorded) = the list it was parked in (its
-- parked key, or the landing list: pop_and_record.lua).
-- ARGV[1] = the entry's id, ARGV[2] = its JSON, ARGV[3] = when, ARGV[4] = the message's
-- delivery tag ('' for one never recorded). Returns nothing.
--
-- A script whose first command frees memory, rather than a MULTI: a full Redis (maxmemory,
-- noeviction) refuses every command queued in a MULTI, and runs such a script to its end.
redis.call('HDEL', KEYS[3], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[4])
if KEYS[5] then
  redis.call('DEL', KEYS[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
