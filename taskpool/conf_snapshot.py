"""Values read from a Celery app's configuration, kept while that configuration stays as it was.

Celery's configuration is a chain of mappings with deprecated aliases, and reading one value
through it costs microseconds: on the path of every ``.delay()`` that is worth keeping. A
snapshot holds while the app has the same configuration object with the same changes made to it
(``app.conf.x = y`` and ``app.conf.update`` change ``conf.changes``; ``config_from_object`` on
a loaded app makes a new object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """An app's configuration object and the changes made to it, as they were."""

    conf: Any
    changes: dict[str, Any]

    @classmethod
    def of(cls, app: Any) -> Snapshot:
        conf = app.conf
        return cls(conf, dict(conf.changes))

    def holds(self, app: Any) -> bool:
        """Whether every value read from ``app.conf`` now reads as it did then."""
        conf = app.conf
        return conf is self.conf and conf.changes == self.changes
