-- Forget an acknowledged message: its unacked records and its delivery count, in one step.
-- KEYS[1] = the unacked index (sorted set), KEYS[2] = the unacked hash,
-- KEYS[3] = the delivery counts (hash); ARGV[1] = the message's delivery tag.
-- Returns nothing.
--
-- A script rather than kombu's MULTI: Redis refuses every command queued in a MULTI once its
-- memory is over maxmemory (noeviction), even these, which free memory; a script whose first
-- command needs none runs. A worker that could not ack on a full Redis stopped.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
