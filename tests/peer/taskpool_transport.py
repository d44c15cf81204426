"""A pytest plugin for the peers' suites: ``redis://`` means taskpool's transport.

Loaded with ``-p tests.peer.taskpool_transport`` (see tests/peer/suites.py).
"""

from kombu.transport import TRANSPORT_ALIASES

TRANSPORT_ALIASES["redis"] = "taskpool.transport:Transport"
