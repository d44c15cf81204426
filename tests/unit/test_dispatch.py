"""The one broker-or-local decision, against a broker port that refuses connections."""

from __future__ import annotations

import pytest
from celery import Celery

from taskpool import BrokerUnavailable, Settings, create_app
from taskpool.dispatch import fall_back, forced, route
from taskpool.testing.redis_server import free_port


def closed_app(**settings: str) -> Celery:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    return create_app(
        "dispatch", settings=Settings(broker_url=url, result_backend=url, **settings),  # type: ignore[arg-type]  # modes as strings
        set_as_current=False,
    )  # fmt: skip


def test_mode_local_never_asks_the_broker() -> None:
    decided = route(closed_app(dispatch="local"))
    assert (decided.backend, decided.dispatch, decided.reason) == (
        "local", "local", "dispatch mode local",
    )  # fmt: skip


def test_mode_auto_falls_back_with_the_reason_and_no_password() -> None:
    decided = route(closed_app())
    assert decided.backend == "local" and decided.mode == "auto"
    assert "unreachable" in decided.reason and "s3cret" not in decided.reason


def test_mode_celery_raises_naming_what_to_do() -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        route(closed_app(dispatch="celery"))
    message = str(raised.value)
    assert "does not fall back" in message and "TASKPOOL_DISPATCH=auto" in message
    assert "s3cret" not in message


def test_a_per_call_mode_wins_over_the_settings_and_a_forced_one_over_both() -> None:
    app = closed_app(dispatch="celery")
    assert route(app, "local").backend == "local"
    with forced("local"):
        assert route(app, "celery").backend == "local"
    with pytest.raises(BrokerUnavailable):
        route(app)


def test_forcing_twice_is_refused() -> None:
    with forced("local"), pytest.raises(RuntimeError, match="already forced"), forced("celery"):
        pass


def test_a_failure_with_its_own_fix_names_that_fix() -> None:
    with pytest.raises(BrokerUnavailable, match="start a worker"):
        fall_back(closed_app(), "celery", "no worker answered", fix="start a worker")
    assert fall_back(closed_app(), "auto", "no worker answered").backend == "local"


def test_only_celerys_result_consumer_giving_up_counts_as_a_failed_publish() -> None:
    """Celery subscribes to the result before publishing, so that error means nothing was
    sent; any other RuntimeError is the caller's to see."""
    from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED

    from taskpool.result_consumer import gave_up

    assert gave_up(RuntimeError(E_RETRY_LIMIT_EXCEEDED))
    assert not gave_up(RuntimeError("the task's own error"))
