-- Pop the next message and record it as unacknowledged, in one atomic step.
-- KEYS[1..l]     = the queue lists, priority by priority, each with one list per queue
-- KEYS[l+1..l+q] = the queues' wake lists (one token per message published by taskpool)
-- KEYS[n-2]      = the unacked index (sorted set: delivery tag -> when to consider restoring)
-- KEYS[n-1]      = the unacked hash (delivery tag -> [message, exchange, routing key])
-- KEYS[n]        = the delivery counts (hash: delivery tag -> times popped without an outcome;
--                  an ack or a final reject deletes the count)
-- ARGV[1] = q, the number of queues; ARGV[2] = '1' to take the popped message's wake token
-- (an idle consumer woken by that token has taken it already, and passes '0').
-- Returns {key, message, deliveries, tag} once popped and recorded (deliveries counts this
-- one); {key, message, 0} for a message it could not read (the worker reads it again, and
-- quarantines it or has kombu record it); false when every list is empty.
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
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local delivery = properties and properties['delivery_info']
    local tag = properties and properties['delivery_tag']
    if not (delivery and type(tag) == 'string') then
      return {KEYS[i], item, 0}
    end
    local now = redis.call('TIME')
    local score = tonumber(now[1]) + tonumber(now[2]) / 1000000
    local headers = message['headers']
    local due = type(headers) == 'table' and unix_time(headers['eta'])
    if due and due > score then
      score = due
    end
    redis.call('ZADD', index_key, score, tag)
    redis.call('HSET', unacked_key, tag, '[' .. item .. ',' .. cjson.encode(delivery['exchange'])
      .. ',' .. cjson.encode(delivery['routing_key']) .. ']')
    return {KEYS[i], item, redis.call('HINCRBY', deliveries_key, tag, 1), tag}
  end
end
return false
