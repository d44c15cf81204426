"""A Redis transport that never holds the only copy of a message.

kombu's Redis transport takes a message off the queue with BRPOP and only afterwards records it
as unacknowledged; a worker killed between the two takes the only copy with it. The soak test
(tests/faults/test_soak.py) lost one task in 3,000 that way in about a third of its runs.

Here one Lua script pops the message *and* records it as unacknowledged, atomically. To wait
for work without taking anything, an idle consumer blocks on ``BLMOVE q q RIGHT RIGHT``, which
moves a message onto the same place in the same list (it stays queued) and wakes the consumer,
which then runs the script. The restore of a dead worker's messages after the visibility timeout
is kombu's own, reading the same ``unacked`` hash. Consumers that do not ack (``no_ack``, e.g.
remote-control replies) and prefixed keys keep kombu's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

#: KEYS: the queue lists in priority order, then the unacked index and the unacked hash.
#: Returns {key, message} once popped and recorded; {key, message, 0} for a message it could
#: not read (kombu then records it, as it always did); nil when every list is empty.
POP_AND_RECORD = """
local index_key, unacked_key = KEYS[#KEYS - 1], KEYS[#KEYS]
for i = 1, #KEYS - 2 do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local delivery = properties and properties['delivery_info']
    local tag = properties and properties['delivery_tag']
    if not (delivery and type(tag) == 'string') then
      return {KEYS[i], item, 0}
    end
    local now = redis.call('TIME')
    redis.call('ZADD', index_key, tonumber(now[1]) + tonumber(now[2]) / 1000000, tag)
    redis.call('HSET', unacked_key, tag, '[' .. item .. ',' .. cjson.encode(delivery['exchange'])
      .. ',' .. cjson.encode(delivery['routing_key']) .. ']')
    return {KEYS[i], item}
  end
end
return false
"""

#: With several lists to watch, BLMOVE can wait on only the first; the others are polled this
#: often while idle (a message of another queue or priority waits at most this long).
OTHER_LISTS_POLL = 0.1


class QoS(kombu_redis.QoS):
    """kombu's QoS, minus the unacked write for messages the script already recorded."""

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded = self.channel.recorded_tags
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # in-memory bookkeeping only
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """Delivers through POP_AND_RECORD; see the module docstring."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded_tags: set[str] = set()
        self._acking_queues: dict[str, int] = {}
        self._pending: str | None = None  # the reliable command awaiting its reply
        self._idle = False  # the last pop found nothing: wait before popping again
        self._client_of_pool: Any = None
        super().__init__(*args, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """One redis client per connection pool, where kombu builds one per command.

        A redis-py client is a thread-safe handle on the pool, but building one copies about
        170 response callbacks: a tenth of a millisecond on every publish.
        """
        if client is not None:
            yield client
            return
        pool = self.pool
        if self._client_of_pool is None or self._client_of_pool.connection_pool is not pool:
            self._client_of_pool = self._create_client()
        yield self._client_of_pool

    # -- which consumers take the reliable path ------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if not no_ack:
            self._acking_queues[queue] = self._acking_queues.get(queue, 0) + 1
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue in self._acking_queues:
            self._acking_queues[queue] -= 1
            if not self._acking_queues[queue]:
                del self._acking_queues[queue]
        return super().basic_cancel(consumer_tag)

    def _reliable(self, queues: list[str]) -> bool:
        return not self.global_keyprefix and all(q in self._acking_queues for q in queues)

    def _keys(self, queues: list[str]) -> list[str]:
        return [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]

    def _script_args(self, keys: list[str]) -> list[Any]:
        return [POP_AND_RECORD, len(keys) + 2, *keys, self.unacked_index_key, self.unacked_key]

    # -- the consuming loop --------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if not self._reliable(queues):
            self._pending = None
            return super()._brpop_start(timeout)
        keys = self._keys(queues)
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        if self._idle:
            wait = timeout if len(keys) == 1 else min(timeout or OTHER_LISTS_POLL, OTHER_LISTS_POLL)
            self._pending = "BLMOVE"
            connection.send_command("BLMOVE", keys[0], keys[0], "RIGHT", "RIGHT", wait or 0)
        else:
            self._pending = "EVAL"
            connection.send_command("EVAL", *self._script_args(keys))

    def _brpop_read(self, **options: Any) -> bool:
        command, self._pending = self._pending, None
        if command is None:
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnects on the next round
                raise
            if command == "BLMOVE" or not reply:
                # Woken by a message (pop it next round), or timed out / found nothing (wait).
                self._idle = command == "EVAL" or reply is None
                raise Empty()
            self._deliver_popped(reply)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu declares it a Connection
            self._flush_brpop_reauth()

    def _deliver_popped(self, reply: list[Any]) -> None:
        dest, payload = self._decode(reply)
        self._queue_cycle.rotate(dest)
        self.connection._deliver(payload, dest)

    def _decode(self, reply: list[Any]) -> tuple[str, dict[str, Any]]:
        key, item = bytes_to_str(reply[0]), loads(bytes_to_str(reply[1]))
        if len(reply) == 2:
            self.recorded_tags.add(item["properties"]["delivery_tag"])
        return key.rsplit(self.sep, 1)[0], item

    # -- basic_get, the synchronous path ---------------------------------------------------

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if no_ack or self.global_keyprefix:
            return super().basic_get(queue, no_ack, **kwargs)
        with self.conn_or_acquire() as client:
            reply = client.eval(*self._script_args(self._keys([queue])))
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            return None
        _, payload = self._decode(reply)
        message = self.Message(payload, channel=self)
        self.qos.append(message, message.delivery_tag)
        return message


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with Channel above; select it with ``broker_transport``."""

    Channel = Channel
