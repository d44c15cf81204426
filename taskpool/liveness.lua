-- What a consumer does with the messages it holds, and the heartbeat that keeps them its own.
-- ARGV[1] names the step; each takes its own keys and arguments:
--
-- beat: KEYS = the consumers alive (sorted set: id -> the server time by which it must beat
--   again, its last beat plus its own timeout), the liveness clock (hash: last = the last beat
--   of any consumer; late_acks, below), the consumers' queues. ARGV = beat, this consumer's
--   id, its liveness timeout in seconds, '1' on its first beat, the prefix of the held-message
--   hashes (prefix .. id), the most tokens a wake list holds, the queues it consumes (names,
--   one a line).
--   Returns {1, id, n, id, n, ...} once beaten (each id a silent consumer whose n held messages
--   are back in their queues), or {0} when this consumer was taken for dead: its messages went
--   back already, and it must not pop or beat under this id again.
-- claim: KEYS = this consumer's held messages, the delivery counts, its landing list, the
--   message's parked key (the landing key, ':', the tag). ARGV = claim, the delivery tag.
--   Records a message the pop parked (pop_and_record.lua) under its delivery tag, once the
--   worker has read it there. Returns its deliveries with this one, or 0 when it was no
--   longer this consumer's (taken for dead meanwhile: the message went back).
-- ack: KEYS = this consumer's held messages (hash: delivery tag -> record), the delivery
--   counts, the liveness clock, the message's parked key. ARGV = ack, the delivery tag.
--   Returns what ack.lua's ack returns (loaded before this file).
-- give_back: KEYS = the held messages, the delivery counts. ARGV = give_back, the delivery tag,
--   '1' if the delivery does not count (given back unrun), the wake cap, '1' to put it at the
--   front of its queue rather than the back. Returns 1, or 0 when the message was no longer
--   this consumer's.
-- leave: KEYS = the consumers alive, the held messages, the consumers' queues, the delivery
--   counts. ARGV = leave, this consumer's id, the wake cap, then the tags whose outcome did not
--   reach Redis (an ack or a requeue lost with its connection). For a consumer that closes
--   after giving back what it delivered and did not run: what it still holds it never
--   delivered (a pop whose reply a lost connection took) or ran without its outcome recorded.
--   Each goes back to the front of its queue, as the sweep would one timeout later; a message
--   never delivered does not count as a delivery. Removes the consumer. Returns how many went
--   back.
-- bury: KEYS = the consumers alive, the held messages, the consumers' queues. ARGV = bury, the
--   consumer's id, the wake cap. For a consumer whose process is known dead: what the sweep does
--   to a silent one, now. Returns how many messages went back.
-- serves: KEYS = the consumers alive, the consumers' queues (hash: id -> queue names, one a
--   line). ARGV = serves, a queue name. Returns how many consumers alive consume that queue.
--
-- A consumer silent for longer than its own timeout is dead (workers may be configured apart):
-- each beat removes such consumers and puts every message they held back at the front of the
-- list it was popped from, with a wake token, in one step. A silence of every consumer longer
-- than the beating one's timeout (Redis restarted, failed over, unreachable or full, or every
-- worker stopped) does not count against anyone: it moves every deadline on by its length.
--
-- A held record is <n>:<list key><m>:<wake key><message>, or @<n>:<list key><m>:<wake
-- key><parked key> for a message kept in a list of its own, as pop_and_record.lua writes them.
-- ack and give_back write nothing before they free memory: a full Redis (maxmemory,
-- noeviction) still runs them.

local step = ARGV[1]

-- The message with "redelivered": true as the first member of its headers and of its
-- properties' delivery_info, as kombu marks what it restores (Celery's dedup of a redelivered
-- success reads it). kombu writes the headers first and the properties last, so the first
-- '"headers": {' and the last '"delivery_info": {' are the message's own (a '"' inside a JSON
-- string is escaped). A message marked before is left as it is.
local function marked(item)
  if string.find(item, '"redelivered": true', 1, true) then
    return item
  end
  local function after(text, at, pattern)
    if not at then
      return text
    end
    local open = at + #pattern - 1
    local member = string.sub(text, open + 1, open + 1) == '}' and '"redelivered": true'
      or '"redelivered": true, '
    return string.sub(text, 1, open) .. member .. string.sub(text, open + 1)
  end
  local info, last = '"delivery_info": {', nil
  local at = string.find(item, info, 1, true)
  while at do
    last = at
    at = string.find(item, info, at + 1, true)
  end
  item = after(item, last, info)
  return after(item, string.find(item, '"headers": {', 1, true), '"headers": {')
end

local function restore(record, cap, front)
  local parked = string.sub(record, 1, 1) == '@'
  local colon = string.find(record, ':', 1, true)
  local n = tonumber(string.sub(record, parked and 2 or 1, colon - 1))
  local list = string.sub(record, colon + 1, colon + n)
  local at = colon + n + 1
  colon = string.find(record, ':', at, true)
  local m = tonumber(string.sub(record, at, colon - 1))
  local wake = string.sub(record, colon + 1, colon + m)
  local message = string.sub(record, colon + m + 1)
  if parked then
    local key = message
    message = redis.call('LINDEX', key, 0)
    redis.call('DEL', key)
    if not message then
      return
    end
  end
  -- Consumers pop from the right: the front of a queue.
  redis.call(front and 'RPUSH' or 'LPUSH', list, marked(message))
  redis.call('LPUSH', wake, 1)
  redis.call('LTRIM', wake, 0, cap - 1)
end

-- A delivery that did not happen taken off the message's count; a count that comes to nothing
-- is removed, as an ack removes it: a message given back and then purged leaves no count.
local function uncount(deliveries, tag)
  if redis.call('HINCRBY', deliveries, tag, -1) <= 0 then
    redis.call('HDEL', deliveries, tag)
  end
end

if step == 'claim' then
  local record = redis.call('HGET', KEYS[1], KEYS[3])
  if not record then
    return 0
  end
  redis.call('HDEL', KEYS[1], KEYS[3])
  redis.call('RENAME', KEYS[3], KEYS[4])
  -- The record names where the message is kept: the landing list's name is its last part.
  redis.call('HSET', KEYS[1], ARGV[2], string.sub(record, 1, #record - #KEYS[3]) .. KEYS[4])
  return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end

if step == 'ack' then
  return ack(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2])
end

if step == 'give_back' then
  local record = redis.call('HGET', KEYS[1], ARGV[2])
  if not record then
    return 0
  end
  redis.call('HDEL', KEYS[1], ARGV[2])
  if ARGV[3] == '1' then
    uncount(KEYS[2], ARGV[2])
  end
  restore(record, tonumber(ARGV[4]), ARGV[5] == '1')
  return 1
end

-- Every message a dead consumer held back at the front of its queue, and the consumer gone.
local function bury(owners, queues, held, id, cap)
  redis.call('ZREM', owners, id)
  redis.call('HDEL', queues, id)
  local records = redis.call('HVALS', held)
  for _, record in ipairs(records) do
    restore(record, cap, true)
  end
  redis.call('DEL', held)
  return #records
end

if step == 'bury' then
  return bury(KEYS[1], KEYS[3], KEYS[2], ARGV[2], tonumber(ARGV[3]))
end

-- What a closing consumer still holds goes back as a dead one's does, the deliveries of the
-- messages it never delivered uncounted first.
if step == 'leave' then
  local ran = {}
  for i = 4, #ARGV do
    ran[ARGV[i]] = true
  end
  for _, tag in ipairs(redis.call('HKEYS', KEYS[2])) do
    -- A parked message not claimed yet is recorded by its landing key and was not counted.
    if not ran[tag] and redis.call('HEXISTS', KEYS[4], tag) == 1 then
      uncount(KEYS[4], tag)
    end
  end
  return bury(KEYS[1], KEYS[3], KEYS[2], ARGV[2], tonumber(ARGV[3]))
end

if step == 'serves' then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local wanted = '\n' .. ARGV[2] .. '\n'
  local count = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE')) do
    local queues = redis.call('HGET', KEYS[2], id)
    if queues and string.find('\n' .. queues .. '\n', wanted, 1, true) then
      count = count + 1
    end
  end
  return count
end

-- beat
local owners, clock, queues = KEYS[1], KEYS[2], KEYS[3]
local owner, timeout, held_prefix, cap = ARGV[2], tonumber(ARGV[3]), ARGV[5], tonumber(ARGV[6])
if ARGV[4] ~= '1' and not redis.call('ZSCORE', owners, owner) then
  return {0}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local last = tonumber(redis.call('HGET', clock, 'last'))
if last and now - last > timeout then
  local silence = now - last
  local deadlines = redis.call('ZRANGE', owners, 0, -1, 'WITHSCORES')
  for i = 1, #deadlines, 2 do
    redis.call('ZADD', owners, tonumber(deadlines[i + 1]) + silence, deadlines[i])
  end
end
redis.call('HSET', clock, 'last', now)
redis.call('ZADD', owners, now + timeout, owner)
if redis.call('HGET', queues, owner) ~= ARGV[7] then
  redis.call('HSET', queues, owner, ARGV[7])
end

local reply = {1}
local dead = redis.call('ZRANGE', owners, '-inf', '(' .. now, 'BYSCORE', 'LIMIT', 0, 10)
for _, id in ipairs(dead) do
  table.insert(reply, id)
  table.insert(reply, bury(owners, queues, held_prefix .. id, id, cap))
end
return reply
