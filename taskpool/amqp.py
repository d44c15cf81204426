"""Celery's messaging class, with connections that name taskpool's transports by their URL
scheme.

An app on taskpool's transport connects with ``broker_transport`` set to its dotted path,
so kombu's ``Connection.as_uri`` started with ``taskpool.transport:Transport://``. Flower picks
its broker page and queue-length API by that scheme and said "'redis' broker is not
supported"; the worker's banner and logs showed it too. The URI now starts with what the
broker URL itself says (``redis://``, ``rediss://``, ``sentinel://``); the connection is made
as before.

A connection also keeps taskpool's transport when it moves to the next URL of a failover list
(``redis://a;redis://b``, a list of sentinels): kombu's ``switch`` takes the transport from the
next URL's scheme, so a worker that failed over went on with kombu's own Redis transport, with
no heartbeats, held messages or quarantine, and clients found "no live worker" from then on.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection as KombuConnection

from taskpool.celery_conf import RELIABLE_TRANSPORTS


class Connection(KombuConnection):
    def as_uri(self, *args: Any, **kwargs: Any) -> str:
        uri: str = super().as_uri(*args, **kwargs)
        transport = self.transport_cls
        if not isinstance(transport, str) or transport not in RELIABLE_TRANSPORTS.values():
            return uri
        if transport == RELIABLE_TRANSPORTS["sentinel"]:
            scheme = "sentinel"
        else:
            scheme = "rediss" if self.ssl else "redis"
        return scheme + uri.removeprefix(transport)

    def switch(self, conn_str: str) -> None:
        configured = self._initial_params.get("transport")
        super().switch(conn_str)
        if configured in RELIABLE_TRANSPORTS.values():
            # kombu set the next URL's scheme; one without a taskpool transport keeps kombu's.
            self.transport_cls = RELIABLE_TRANSPORTS.get(self.transport_cls, self.transport_cls)


class AMQP(CeleryAMQP):
    """Celery's AMQP (the app's ``amqp_cls``) with taskpool's ``Connection``."""

    Connection = Connection
