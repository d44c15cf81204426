"""``FallbackTask``: publish to the broker when it answers, else run on the local pool.

It is a Celery task base class. Any app gets the behaviour with
``Celery(..., task_cls=FallbackTask)``; apps made by ``taskpool.create_app`` have it already.
Where the work goes is decided in ``taskpool.dispatch``. The app's ``send_task`` (a call by
name, and Celery's own way to publish every task) gets the same decision once one of its tasks
is bound (``guard_send_task``).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import Task
from celery.result import AsyncResult, EagerResult
from celery.utils.time import maybe_iso8601, maybe_make_aware

from taskpool import dispatch, quick_publish
from taskpool.arguments import check_call
from taskpool.errors import LOST_CONNECTION, BrokerUnavailable, LocalPoolError
from taskpool.local_pool import RunOptions, submit
from taskpool.result_consumer import gave_up
from taskpool.results import LocalResult
from taskpool.settings import settings_of

#: Options that make a call part of a canvas, and what each carries.
CANVAS = {
    "link": "a callback",
    "link_error": "an error callback",
    "chain": "a chain",
    "group_id": "a group",
    "chord": "a chord",
}


class FallbackTask(Task):
    """A task whose ``.delay()`` never hangs on a dead broker.

    Dispatch mode (``TASKPOOL_DISPATCH``, or ``dispatch=`` per call): ``auto`` publishes when
    the broker and result store answer and runs on the local pool when not; ``celery`` only
    publishes and raises BrokerUnavailable; ``local`` only runs locally and opens no connection.
    """

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | LocalResult | EagerResult:
        """Celery's ``delay``, typed: an AsyncResult from the broker, a LocalResult from the
        local pool (an EagerResult with ``task_always_eager``), with the same API."""
        return self.apply_async(args, kwargs)

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
        requested = options.pop("dispatch", None)
        # Refused here, on either backend: the same call must not work locally and fail remotely.
        settings = settings_of(self.app)
        check_call(
            self.name, args, kwargs, settings.max_message_bytes, self.serializer,
            json_safe_integers=settings.json_safe_integers,
        )  # fmt: skip
        celery_call = dict(
            args=args, kwargs=kwargs, task_id=task_id, producer=producer,
            link=link, link_error=link_error, shadow=shadow, **options,
        )  # fmt: skip

        def queue() -> str | None:
            known = None if options else quick_publish.queue_of(self)
            return known or dispatch.queue_of(self.app, self.name, options, self)

        route = dispatch.route(self.app, requested, queue=queue)
        if route.backend == "eager":
            return super().apply_async(**celery_call)
        if route.backend == "broker":
            plain = not options and all(
                value is None for value in (task_id, producer, link, link_error, shadow)
            )

            def celery(task_id: str | None) -> Any:
                return super(FallbackTask, self).apply_async(**{**celery_call, "task_id": task_id})

            try:
                token = dispatch.routed.set(True)  # the app's send_task need not decide again
                try:
                    if plain:
                        return quick_publish.send(self, args, kwargs, celery)
                    return super().apply_async(**celery_call)
                finally:
                    dispatch.routed.reset(token)
            except LOST_CONNECTION as exc:
                route = dispatch.publish_failed(self.app, route.mode, exc)
            except RuntimeError as exc:
                # Celery's result consumer could not reach the result store to subscribe,
                # which it does before publishing: nothing was sent, so the call may run here.
                if not gave_up(exc):
                    raise
                route = dispatch.publish_failed(self.app, route.mode, exc)
        self.refuse_canvas(route, {"link": link, "link_error": link_error, **options})
        return self._run_locally(args, kwargs, task_id, options, store=route.store)

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery binds every task of the app, its built-in ones included, when it finalizes."""
        super().on_bound(app)
        guard_send_task(app)

    def refuse_canvas(self, route: dispatch.Route, options: dict[str, Any]) -> None:
        refuse_canvas(self.name, route, options)

    def _run_locally(
        self,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        options: dict[str, Any],
        *,
        store: bool = False,
    ) -> LocalResult | EagerResult:
        # Adapted from Celery 5.7.0 Task.apply_async: arguments that do not fit the function
        # fail at the call; ``__header__`` is read with a default rather than caught.
        check_arguments = getattr(self, "__header__", None) if self.typing else None
        if check_arguments is not None:
            check_arguments(*(args or ()), **(kwargs or {}))
        # Routing options mean nothing to one local queue; timing options are honoured.
        countdown = options.get("countdown") or 0.0
        eta = options.get("eta")
        if eta is not None:
            countdown = (self._as_time(eta) - self.app.now()).total_seconds()
        expires = options.get("expires")
        if isinstance(expires, (int, float)):
            expires_at: float | None = time.time() + expires
        else:
            expires_at = None if expires is None else self._as_time(expires).timestamp()
        run = RunOptions(
            countdown=max(0.0, countdown),
            expires_at=expires_at,
            time_limit=options.get("time_limit"),
            soft_time_limit=options.get("soft_time_limit"),
        )
        return submit(self, args or (), kwargs, task_id=task_id, options=run, store=store)

    def _as_time(self, value: Any) -> datetime:
        """An eta or expires, given as a datetime or an ISO string, made timezone-aware."""
        return maybe_make_aware(maybe_iso8601(value), self.app.timezone)


def guard_send_task(app: Any) -> None:
    """Give ``app.send_task`` the broker-or-local decision of ``.delay()`` (``send_task``);
    once per app, and never over a ``send_task`` set on the app by its owner."""
    if "send_task" in vars(app):
        return
    publish = app.send_task  # Celery's, or the app class's own override

    def guarded(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return send_task(app, publish, name, args, kwargs, options)

    guarded.__doc__ = send_task.__doc__
    guarded.taskpool_guard = True  # type: ignore[attr-defined]  # quick_publish knows it
    app.send_task = guarded


def send_task(
    app: Any, publish: Any, name: str, args: Any, kwargs: Any, options: dict[str, Any]
) -> Any:
    """Celery's ``send_task`` (``publish``), with the broker-or-local decision of ``.delay()``.

    With no broker (mode auto) or in mode local, a task registered on the app runs on the local
    pool; one that is not raises BrokerUnavailable (or LocalPoolError) at once, instead of
    Celery's retries and "the Celery application must be restarted".
    """
    if dispatch.routed.get():  # FallbackTask.apply_async decided already
        return publish(name, args, kwargs, **options)
    requested = options.pop("dispatch", None)
    route = dispatch.route(
        app, requested, queue=lambda: dispatch.queue_of(app, name, options, app.tasks.get(name))
    )
    if route.backend != "local":  # Celery's send_task publishes under task_always_eager too
        return publish(name, args, kwargs, **options)
    task = app.tasks.get(name)
    if isinstance(task, FallbackTask):
        task.refuse_canvas(route, options)
        return task.apply_async(args, kwargs, dispatch="local", **options)
    error = LocalPoolError if route.mode == "local" else BrokerUnavailable
    raise error(
        f"send_task({name!r}): it cannot go to the broker ({route.reason}), and no task of "
        f"that name is registered on app {app.main!r} to run on the local pool"
    )


def refuse_canvas(caller: str, route: dispatch.Route, options: dict[str, Any]) -> None:
    """Callbacks, chains, groups and chords are carried by broker messages and results kept in
    the result store: run on the local pool, only the first step would run and the rest be
    dropped. So off the broker they raise, naming the options, before anything runs.
    """
    named = [f"{name}= ({what})" for name, what in CANVAS.items() if options.get(name)]
    if not named:
        return
    what = ", ".join(named)
    if route.mode == "local":
        raise LocalPoolError(
            f"{caller}: {what} need the broker, and the local pool cannot run them; "
            "use dispatch auto or celery, or call the steps one by one"
        )
    raise BrokerUnavailable(
        f"{caller}: {what} need the broker, and it does not answer ({route.reason}); "
        "nothing was run. Start the broker, or call the steps one by one"
    )
