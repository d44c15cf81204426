"""How many replicas a write waits for (TASKPOOL_REDIS_WAIT_REPLICAS), and the check after.

A write waits (Redis ``WAIT``) for the replicas asked for, or for fewer when fewer are connected
to the primary right now: a primary that lost its replica has no failover to lose the write
to, and waiting there would only stall every write for the timeout. The count of connected
replicas comes from ``ROLE``, asked at most once a second, and again after a wait that fell
short.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from redis.utils import str_if_bytes

from taskpool.errors import NotReplicated

#: Seconds a count of connected replicas is trusted.
RECHECK = 1.0


class ReplicaWait:
    """The wait for one client's writes; thread-safe."""

    def __init__(self, wanted: int, timeout: float) -> None:
        self.wanted, self.timeout = wanted, timeout
        self._lock = threading.Lock()
        self._connected = wanted
        self._checked_at = float("-inf")

    def add(self, client: Any, pipe: Any) -> int:
        """Queue ``WAIT`` on ``pipe`` (after the writes it covers); return how many replicas it
        waits for (0: none connected, nothing queued)."""
        replicas = min(self.wanted, self._connected_replicas(client))
        if replicas:
            pipe.execute_command("WAIT", replicas, max(1, int(self.timeout * 1000)))
        return replicas

    def check(self, replicas: int, acked: Any, what: str) -> None:
        """Raise NotReplicated when fewer than ``replicas`` confirmed ``what``."""
        if int(acked) >= replicas:
            return
        with self._lock:
            self._checked_at = float("-inf")  # a replica may have gone: count them again
        raise NotReplicated(
            f"{what} reached {acked} of the {replicas} replica(s) connected and asked for "
            f"(TASKPOOL_REDIS_WAIT_REPLICAS={self.wanted}) within {self.timeout:g} s"
        )

    def _connected_replicas(self, client: Any) -> int:
        with self._lock:
            if time.monotonic() - self._checked_at < RECHECK:
                return self._connected
        role = client.execute_command("ROLE")
        connected = len(role[2]) if str_if_bytes(role[0]) == "master" else 0
        with self._lock:
            self._connected, self._checked_at = connected, time.monotonic()
        return connected
