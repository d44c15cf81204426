"""The broker verdict: remembered briefly, logged once per switch, passwords scrubbed."""

from __future__ import annotations

import logging
from typing import Any

import fakeredis
import pytest
import redis
from kombu.exceptions import OperationalError

from taskpool import Settings, create_app
from taskpool.health import BrokerHealth, probe_redis, refusal


class ScriptedHealth(BrokerHealth):
    """Probes answer from a script instead of the network, and are counted."""

    def __init__(self, answers: list[str | None], **kwargs: Any) -> None:
        # Held here: a BrokerHealth refers to its app weakly.
        self.own_app = app = create_app(
            "tasks",
            settings=Settings(
                broker_url="redis://:pw@127.0.0.1:1/0", result_backend="redis://:pw@127.0.0.1:1/0"
            ),
        )
        super().__init__(app, timeout=0.1, recheck=2.0, **kwargs)
        self.answers = answers
        self.probes = 0

    def _probe(self) -> str | None:
        self.probes += 1
        return self.answers.pop(0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_calls_probes_once_and_rechecks_after_the_interval() -> None:
    clock = Clock()
    health = ScriptedHealth([None, None], clock=clock)
    assert all(health.is_up() for _ in range(50))
    assert health.probes == 1
    clock.now += 2.0
    assert health.is_up()
    assert health.probes == 2


def test_each_switch_is_logged_once_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = ScriptedHealth(["broker down", "broker down", None, None], clock=clock)
    with caplog.at_level(logging.WARNING, logger="taskpool.health"):
        for _ in range(4):
            health.is_up()
            health.is_up()
            clock.now += 2.0
    messages = [r.getMessage() for r in caplog.records if r.name == "taskpool.health"]
    assert len(messages) == 2
    assert "local pool" in messages[0]
    assert "answers again" in messages[1]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_failed_publish_marks_the_broker_down_without_waiting_for_a_recheck() -> None:
    health = ScriptedHealth([None])
    assert health.is_up()
    health.mark_down(ConnectionError("Error 111 connecting to :pw@127.0.0.1"))
    assert not health.is_up()
    assert "pw" not in health.reason


def test_the_result_store_ping_talks_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The result-store probe is a real PING through redis-py (here against fakeredis)."""
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        "taskpool.health.redis.Redis.from_url",
        lambda url, **kw: fakeredis.FakeRedis(server=server, **kw),
    )
    probe_redis("redis://127.0.0.1:1/0", timeout=0.1)  # answers: no exception
    server.connected = False
    with pytest.raises(Exception, match="connect|Connection"):
        probe_redis("redis://127.0.0.1:1/0", timeout=0.1)


def test_the_health_registry_does_not_keep_an_app_alive() -> None:
    import gc
    import weakref

    from taskpool import health as health_module

    url = "redis://127.0.0.1:1/0"
    app = create_app("short-lived", settings=Settings(broker_url=url), set_as_current=False)
    assert health_module.health_of(app, 0.1, 2.0) is health_module.health_of(app, 0.1, 2.0)
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None


def test_a_plain_apps_url_that_names_no_transport_is_a_configuration_error() -> None:
    # Without taskpool's settings to check the scheme, the probe's own error tells it: mode
    # auto ran the work locally, and `.get()` then raised "No module named 'redsi'".
    from celery import Celery

    from taskpool import ConfigError

    app = Celery("proj", broker="redsi://:pw@127.0.0.1:1/0")
    health = BrokerHealth(app, timeout=0.1, recheck=2.0)
    with pytest.raises(ConfigError, match="broker_url.*names no transport.*redis") as raised:
        health.is_up()
    assert ":pw@" not in str(raised.value)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (redis.exceptions.AuthenticationError("invalid password"), "rejected the credentials"),
        (redis.exceptions.ResponseError("WRONGPASS invalid username-password pair"), "rejected"),
        (redis.exceptions.ResponseError("DB index is out of range"), "no such database"),
        (KeyError("No such transport: redsi.  Did you mean redis?"), "names no transport"),
    ],
)
def test_refusals_are_told_from_outages(error: BaseException, said: str) -> None:
    wrapped = OperationalError("kombu's wrapper")
    wrapped.__cause__ = error
    assert said in (refusal(wrapped) or "")
    for outage in (ConnectionRefusedError(111, "refused"), redis.exceptions.TimeoutError()):
        assert refusal(outage) is None
