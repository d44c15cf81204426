"""A pytest plugin for the peers' suites: ``redis://`` means taskpool's transport and, for
Celery's result backend, taskpool's result store.

Loaded with ``-p tests.peer.taskpool_transport`` (see tests/peer/suites.py).
"""

from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES

TRANSPORT_ALIASES["redis"] = "taskpool.transport:Transport"
BACKEND_ALIASES["redis"] = "taskpool.result_store:RedisStore"
