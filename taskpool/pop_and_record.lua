-- Pop the next message and record it as unacknowledged, in one atomic step.
-- KEYS[1..l]     = the queue lists, priority by priority, each with one list per queue
-- KEYS[l+1..l+q] = the queues' wake lists (one token per message published by taskpool)
-- KEYS[n-2]      = the unacked index (sorted set: delivery tag -> when to consider restoring)
-- KEYS[n-1]      = the unacked hash (delivery tag -> [message, exchange, routing key])
-- KEYS[n]        = the delivery counts (hash: delivery tag -> times popped without an outcome;
--                  an ack or a final reject deletes the count)
-- ARGV[1] = q, the number of queues; ARGV[2] = '1' to take the popped message's wake token
-- (an idle consumer woken by that token has taken it already, and passes '0').
-- Returns {key, message, deliveries, tag, eta} once popped and recorded (deliveries counts this
-- one; eta is the eta header read, or false); {key, message, 0} for a message it could not read
-- (the worker reads it again, and quarantines it or has kombu record it); false when every
-- list is empty.
--
-- The message is not decoded whole: Redis serves no other client while a script runs, and
-- decoding costs time in proportion to the message's size (bench/big_message.py). Its
-- properties and headers are found in its text (kombu writes them after the body, which it
-- stores in base64, so the search skips the body at memchr speed) and only they are decoded.
-- A message written otherwise (other spacing, a brace inside a header string) is decoded whole.
-- The worker reads the whole message itself and quarantines one whose delivery tag or eta
-- differs from the one read here (a crafted message with a decoy object where the real one is
-- looked for).
--
-- A message due later (Celery's eta header, from countdown or eta) is indexed at its due time,
-- not now: kombu's restore puts back messages indexed more than the visibility timeout ago, so
-- one waiting for its eta on a live worker is not handed to a second worker and run twice
-- (celery #4400, kombu #337).

-- Unix seconds of an ISO 8601 time such as 2026-11-28T09:40:00.5+01:00 (UTC without an
-- offset), or nil. Days from the civil date: Howard Hinnant's days_from_civil.
local function unix_time(text)
  if type(text) ~= 'string' then
    return nil
  end
  local y, mo, d, h, mi, s = string.match(
    text, '^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)')
  if not y then
    return nil
  end
  y, mo = tonumber(y), tonumber(mo)
  if mo <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local t = (era * 146097 + doe - 719468) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60
    + tonumber(s)
  local sign, oh, om = string.match(text, '([+-])(%d%d):?(%d%d)$')
  if sign == '+' then
    t = t - tonumber(oh) * 3600 - tonumber(om) * 60
  elseif sign == '-' then
    t = t + tonumber(oh) * 3600 + tonumber(om) * 60
  end
  return t
end

-- The JSON object after the first (or, with last, the last) '"name": {' in the message's
-- text, decoded, or nil.
local function object_after(item, name, last)
  local pattern = '"' .. name .. '": {'
  local at = string.find(item, pattern, 1, true)
  while last and at do
    local next_at = string.find(item, pattern, at + 1, true)
    if not next_at then
      break
    end
    at = next_at
  end
  if not at then
    return nil
  end
  local text = string.match(item, '^%b{}', at + #name + 4)
  if not text then
    return nil
  end
  local ok, value = pcall(cjson.decode, text)
  if ok and type(value) == 'table' then
    return value
  end
  return nil
end

-- The message's properties and headers, or nil for a message that is not a JSON object. kombu
-- writes the headers first and the properties last: an object of either name inside a header
-- comes after the headers' start and before the properties'.
local function envelope(item)
  local properties = object_after(item, 'properties', true)
  local headers = object_after(item, 'headers', false)
  if properties and headers and type(properties['delivery_tag']) == 'string'
      and type(properties['delivery_info']) == 'table' then
    return properties, headers
  end
  local ok, message = pcall(cjson.decode, item)
  if not (ok and type(message) == 'table') then
    return nil
  end
  return message['properties'], message['headers']
end

local index_key, unacked_key, deliveries_key = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local queues = tonumber(ARGV[1])
local lists = #KEYS - 3 - queues
for i = 1, lists do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    -- Tokens track the messages waiting, so the next message still wakes a consumer of its own.
    if ARGV[2] == '1' then
      redis.call('RPOP', KEYS[lists + (i - 1) % queues + 1])
    end
    local properties, headers = envelope(item)
    local delivery = type(properties) == 'table' and properties['delivery_info']
    local tag = delivery and properties['delivery_tag']
    if not (type(delivery) == 'table' and type(tag) == 'string') then
      return {KEYS[i], item, 0}
    end
    local now = redis.call('TIME')
    local score = tonumber(now[1]) + tonumber(now[2]) / 1000000
    local eta = type(headers) == 'table' and type(headers['eta']) == 'string' and headers['eta']
    local due = unix_time(eta)
    if due and due > score then
      score = due
    end
    redis.call('ZADD', index_key, score, tag)
    redis.call('HSET', unacked_key, tag, '[' .. item .. ',' .. cjson.encode(delivery['exchange'])
      .. ',' .. cjson.encode(delivery['routing_key']) .. ']')
    return {KEYS[i], item, redis.call('HINCRBY', deliveries_key, tag, 1), tag, eta}
  end
end
return false
