-- Pop the next messages, up to a count, and record each as held by this consumer, in one
-- atomic step.
-- KEYS[1..l]     = the queue lists, priority by priority, each with one list per queue
-- KEYS[l+1..l+q] = the queues' wake lists (one token per message published by taskpool)
-- KEYS[n-3]      = the consumers alive (sorted set, liveness.lua)
-- KEYS[n-2]      = this consumer's held messages (hash: delivery tag -> record)
-- KEYS[n-1]      = the delivery counts (hash: delivery tag -> times popped without an outcome;
--                  an ack or a final reject deletes the count)
-- KEYS[n]        = this consumer's landing list, where a big message waits to be claimed
-- ARGV[1] = q, the number of queues; ARGV[2] = '1' to take the popped message's wake token
-- (an idle consumer woken by that token has taken it already, and passes '0'); ARGV[3] = this
-- consumer's id; ARGV[4] = the longest list whose last message SORT reaches in constant time
-- ('-1': any; Redis 7 seeks from the nearer end, 6.2 walks from the head); ARGV[5] = the size
-- in bytes above which a message is parked rather than handed to this script; ARGV[6] = the
-- most messages to pop (the consumer's prefetch room; 1 when absent).
-- Returns a list of what it popped, in the order popped (see the loop at the end),
-- each entry {key, message, deliveries, tag} once popped and recorded (deliveries counts this
-- one); {key, message, 0} for a message whose tag it could not read (the worker reads it again,
-- and quarantines it or has kombu record it); or {key, landing} for a message parked in the
-- landing list (the worker reads it there, then claims it under its tag: liveness.lua's claim),
-- always the last entry, as the landing list holds one. Returns false when every list is
-- empty; -1, popping nothing, when this consumer is no longer alive (taken for dead: what it
-- records would never go back).
--
-- Each message popped after the first takes a wake token too. One call for several messages
-- is one round trip instead of several, for a worker's prefetch (Dramatiq fetches in batches
-- too); what the worker does not start (it began stopping) it gives back, uncounted.
--
-- A record is <n>:<list key><m>:<wake key><message>, or @<n>:<list key><m>:<wake key><parked
-- key> for a parked message: liveness.lua puts the message back where it came from when the
-- consumer gives it back or dies.
--
-- Redis serves no other client while a script runs, and a value a script is handed is copied
-- several times (bench/big_message.py: popping 67 MB into a script blocks Redis three times as
-- long as stock kombu's RPOP). So the message is first copied by SORT ... STORE into the
-- landing list, which hands the script nothing, and only a small one is popped from there into
-- the script. A big one stays parked, and the worker reads it with a plain LINDEX.
--
-- The message is not decoded whole either. Its properties are found in its text (kombu writes
-- them last, after the body, which it stores in base64, so the search skips the body at memchr
-- speed) and only they are decoded. A message written otherwise (other spacing, a brace inside
-- a string) is decoded whole. The worker reads the whole message itself and quarantines one
-- whose delivery tag differs from the one read here (a crafted message with a decoy object
-- where the real one is looked for).

-- The JSON object after the last '"properties": {' in the message's text, decoded, or nil.
local function last_properties(item)
  local pattern = '"properties": {'
  local at = string.find(item, pattern, 1, true)
  while at do
    local next_at = string.find(item, pattern, at + 1, true)
    if not next_at then
      break
    end
    at = next_at
  end
  if not at then
    return nil
  end
  local text = string.match(item, '^%b{}', at + #pattern - 1)
  if not text then
    return nil
  end
  local ok, value = pcall(cjson.decode, text)
  if ok and type(value) == 'table' then
    return value
  end
  return nil
end

-- The message's delivery tag, or nil for a message that is not a JSON object with one.
local function tag_of(item)
  local properties = last_properties(item)
  if not (properties and type(properties['delivery_tag']) == 'string'
      and type(properties['delivery_info']) == 'table') then
    local ok, message = pcall(cjson.decode, item)
    properties = ok and type(message) == 'table' and message['properties']
  end
  if type(properties) == 'table' and type(properties['delivery_info']) == 'table'
      and type(properties['delivery_tag']) == 'string' then
    return properties['delivery_tag']
  end
  return nil
end

local owners, held_key, deliveries_key, landing =
  KEYS[#KEYS - 3], KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local queues = tonumber(ARGV[1])
local seek_limit, park_above = tonumber(ARGV[4]), tonumber(ARGV[5])
local lists = #KEYS - 4 - queues
if not redis.call('ZSCORE', owners, ARGV[3]) then
  return -1
end
local parked = redis.call('HGET', held_key, landing)
if parked then
  -- Parked by an earlier pop and not claimed (the worker lost the reply): hand it out again.
  local colon = string.find(parked, ':', 1, true)
  return {{string.sub(parked, colon + 1, colon + tonumber(string.sub(parked, 2, colon - 1))),
    landing}}
end
-- Pops the last message of the non-empty list KEYS[i]; returns its entry, and true when it
-- was parked (the landing list is taken: the call stops there).
local function pop_one(i, length, take_token)
  local key = KEYS[i]
  -- Tokens track the messages waiting, so the next message still wakes a consumer of its own.
  local wake = KEYS[lists + (i - 1) % queues + 1]
  -- Where the message goes back to (liveness.lua): the head of every record.
  local from = #key .. ':' .. key .. #wake .. ':' .. wake
  -- A write that frees memory first: a full Redis (maxmemory, noeviction) refuses a script's
  -- first write that may grow memory (the SORT below), and runs the rest of one that wrote.
  redis.call('DEL', landing)
  if take_token then
    redis.call('RPOP', wake)
  end
  local item, copied = nil, false
  if seek_limit < 0 or length <= seek_limit then
    -- A Redis whose ACL or configuration refuses SORT (it is in @dangerous) or MEMORY gets
    -- the message popped into the script, as a long queue on 6.2 does.
    local stored = redis.pcall('SORT', key, 'BY', 'nosort', 'LIMIT', 0, 1, 'DESC', 'STORE',
      landing)
    copied = type(stored) == 'number'
  end
  if copied then
    redis.call('LTRIM', key, 0, -2)
    local size = redis.pcall('MEMORY', 'USAGE', landing, 'SAMPLES', 0)
    if type(size) == 'number' and size > park_above then
      redis.call('HSET', held_key, landing, '@' .. from .. landing)
      return {key, landing}, true
    end
    item = redis.call('RPOP', landing)
  else
    item = redis.call('RPOP', key)
  end
  local tag = tag_of(item)
  if not tag then
    return {key, item, 0}, false
  end
  redis.call('HSET', held_key, tag, from .. item)
  return {key, item, redis.call('HINCRBY', deliveries_key, tag, 1), tag}, false
end

-- Message by message as BRPOP over the lists would take them, with kombu's queue cycle turned
-- after each: the highest priority first, and within it the queues in turn, starting after the
-- queue of the last message taken (the worker rotates its cycle the same way as it delivers).
local most = tonumber(ARGV[6] or '1')
local popped = {}
local take_token = ARGV[2] == '1'
local level, first, parked = 0, 0, false
while level < lists / queues and #popped < most and not parked do
  local found = false
  for step = 0, queues - 1 do
    local q = (first + step) % queues
    local i = level * queues + q + 1
    local length = redis.call('LLEN', KEYS[i])
    if length > 0 then
      local entry
      entry, parked = pop_one(i, length, take_token)
      popped[#popped + 1] = entry
      take_token, first, found = true, (q + 1) % queues, true
      break
    end
  end
  if not found then
    level = level + 1
  end
end
if #popped == 0 then
  return false
end
return popped
