"""Python imports this at start in every process whose path holds this folder.

tests/peer/suites.py puts the folder on PYTHONPATH for the runs with taskpool's pieces only, so
a broker that the suite reaches from a child process (a ``celery worker`` a test starts) goes
through taskpool's transport too, as it does in the pytest process and its forked pool.
"""

import tests.peer.taskpool_transport  # noqa: F401 - redis:// is taskpool's transport and store
