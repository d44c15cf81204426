"""What Redis records as taken and not yet acked: the consumers' held messages
(``taskpool.liveness``) and kombu's own ``unacked`` hash (messages stock workers took)."""

from __future__ import annotations

from typing import Any

from taskpool.liveness import CONSUMERS, PARKED, held_keys, summary


def held_count(client: Any, prefix: str = "") -> int:
    """Messages taken and not yet acked, rejected or given back, by any consumer."""
    return summary(client, prefix)["held"] + int(client.hlen(f"{prefix}unacked"))


def held_text(client: Any, prefix: str = "") -> str:
    """Every held message's record, and each parked message, as one text to search for a
    task id in."""
    records = [client.hvals(key) for key in held_keys(client, prefix)]
    parked = [client.lrange(key, 0, -1) for key in client.scan_iter(match=f"{prefix}{PARKED}*")]
    records.append(client.hvals(f"{prefix}unacked"))
    return " ".join(str(value) for values in [*records, *parked] for value in values)


def consumers(client: Any, prefix: str = "") -> list[str]:
    """The consumers alive, by their last beat."""
    members = client.zrange(f"{prefix}{CONSUMERS}", 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]
