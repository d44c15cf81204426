-- The ack of a message a consumer holds, shared by liveness.lua (its ack step) and
-- store_result.lua (a result stored with its message's ack): put before each when loaded.
-- held: the consumer's held messages (hash: delivery tag -> record); deliveries: the delivery
-- counts; clock: the liveness clock; parked: the message's parked key; tag: the delivery tag.
-- Returns 1, or 0 when the message was no longer this consumer's (it was taken for dead
-- meanwhile: the message went back and may run again; counted in the clock's late_acks).
local function ack(held, deliveries, clock, parked, tag)
  if redis.call('HDEL', held, tag) == 1 then
    redis.call('HDEL', deliveries, tag)
    redis.call('DEL', parked)
    return 1
  end
  redis.pcall('HINCRBY', clock, 'late_acks', 1)
  return 0
end

