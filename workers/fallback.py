"""The fallback decision: publish to the broker when it answers, else run on the local pool.

``FallbackTask`` is a Celery task base class. Any app gets the behaviour with
``Celery(..., task_cls=FallbackTask)``; taskpool's own app uses it.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task
from celery.result import AsyncResult, EagerResult
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.exceptions import OperationalError

from config import check_dispatch, mask_url, settings_of
from workers.arguments import check_call
from workers.broker_health import health_of
from workers.errors import BrokerUnavailable, LocalPoolError
from workers.local_pool import LocalRunner
from workers.results import LocalResult

#: What a failed publish raises: Celery wraps the broker's errors, the result store's may be raw.
PUBLISH_ERRORS = (
    OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class FallbackTask(Task):  # type: ignore[misc]
    """A task whose ``.delay()`` never hangs on a dead broker.

    Dispatch mode (``TASKPOOL_DISPATCH``, or ``dispatch=`` per call): ``auto`` publishes when
    the broker and result store answer and runs on the local pool when not; ``celery`` only
    publishes and raises BrokerUnavailable; ``local`` only runs locally and opens no connection.
    """

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult | LocalResult | EagerResult:
        settings = settings_of(self.app)
        mode = check_dispatch(options.pop("dispatch", None) or settings.dispatch)
        # Refused here, on either backend: the same call must not work locally and fail remotely.
        check_call(self.name, args, kwargs, settings.max_message_bytes, self.serializer)
        if mode == "auto" and self.app.current_worker_task is not None:
            # Inside a Celery worker (a retry, a task calling a task) a local run's result
            # would never reach the result store its caller waits on: stay on the broker.
            mode = "celery"
        if self.app.conf.task_always_eager:
            return super().apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )
        if mode == "local":
            return self._run_locally(args, kwargs, task_id, options, link, link_error)
        health = health_of(self.app, settings.broker_timeout, settings.broker_recheck)
        if health.is_up():
            try:
                return super().apply_async(
                    args, kwargs, task_id, producer, link, link_error, shadow, **options
                )
            except PUBLISH_ERRORS as exc:
                health.mark_down(exc)
        if mode == "celery":
            raise BrokerUnavailable(
                f"{health.reason}. TASKPOOL_DISPATCH=celery does not fall back: start the broker "
                f"({mask_url(health.broker_url)}; e.g. `docker compose up redis`), "
                "or set TASKPOOL_DISPATCH=auto to run on the local pool meanwhile"
            )
        return self._run_locally(args, kwargs, task_id, options, link, link_error)

    def _run_locally(
        self,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        options: dict[str, Any],
        link: Any = None,
        link_error: Any = None,
    ) -> LocalResult | EagerResult:
        if link or link_error or options.get("chain"):
            # Callbacks and chains are carried by broker messages; running only the first
            # step here would drop the rest without a word.
            raise LocalPoolError(
                f"{self.name}: callbacks (link, link_error) and chains need the broker, and "
                "the local pool cannot run them; start the broker or call the steps one by one"
            )
        # Routing options mean nothing to the local pool; a requested delay is still honoured.
        countdown = options.get("countdown")
        eta = options.get("eta")
        if eta is not None:
            due = maybe_make_aware(maybe_iso8601(eta))
            countdown = (due - self.app.now()).total_seconds()
        return LocalRunner(self.app).submit(
            self, args or (), kwargs, task_id=task_id, countdown=countdown
        )
