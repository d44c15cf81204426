"""This project's Celery app, configured by taskpool from the ``TASKPOOL_*`` settings."""

from taskpool import create_app

app = create_app("tasks", include=["tasks.examples"])
