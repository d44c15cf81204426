"""How many replicas a write waits for (TASKPOOL_REDIS_WAIT_REPLICAS), and the check after.

A write waits (Redis ``WAIT``) for the replicas asked for, or for fewer when fewer are connected
to the primary right now: a primary that lost its replica has no failover to lose the write
to, and waiting there would only stall every write for the timeout. The count is of the
replicas online (``INFO replication``), asked at most once a second, and again after a wait that
fell short. A replica in its first sync is not counted: it holds no copy to fail over to yet,
and it confirms nothing until the sync ends (on Redis 7, a diskless sync starts only after
``repl-diskless-sync-delay``, 5 s), so waiting for it would fail every write meanwhile. Redis
6.2's ``ROLE`` listed such a replica and 7's does not; ``INFO``'s state reads the same on both.
"""

from __future__ import annotations

import threading
import time
from typing import Any

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
        connected = online_replicas(client.info("replication"))
        with self._lock:
            self._connected, self._checked_at = connected, time.monotonic()
        return connected


def online_replicas(info: dict[str, Any]) -> int:
    """The replicas online in a primary's ``INFO replication`` (none on a replica)."""
    if str(info.get("role")) != "master":
        return 0
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return sum(1 for replica in replicas if str(replica.get("state")) == "online")
