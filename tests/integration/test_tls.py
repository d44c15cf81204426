"""rediss:// for broker and results: a real TLS-only redis-server, a throwaway CA, a real worker."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_py
from celery.result import AsyncResult

from taskpool import BrokerUnavailable, Settings, celery_config
from taskpool.health import probe_redis
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer, TlsFiles, sentinel_config
from tests.support.apps import client_app, settings_app

#: A handshake that fails must fail within this (generous) bound, not hang.
FAILS_WITHIN = 3.0


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return TlsFiles.make(tmp_path / "tls")


@pytest.fixture
def tls_redis(redis_factory: Callable[..., RedisServer], tls: TlsFiles) -> RedisServer:
    """A redis-server that speaks TLS only (--port 0), with a certificate for 127.0.0.1."""
    return redis_factory(tls=tls)


def test_tasks_go_through_a_tls_only_redis_to_a_worker_and_back(
    tls_redis: RedisServer, tls: TlsFiles, worker_factory: Callable[..., CeleryWorker]
) -> None:
    url = tls_redis.url()
    assert url.startswith("rediss://")
    worker_factory(url, node_name("tls"), TASKPOOL_REDIS_TLS_CA_FILE=str(tls.ca))
    app = client_app(url, dispatch="celery", redis_tls_ca_file=str(tls.ca))
    # The reliable transport serves rediss:// too.
    assert app.conf.broker_transport == "taskpool.transport:Transport"
    result = app.tasks["tasks.square"].delay(12)
    assert isinstance(result, AsyncResult) and result.get(timeout=20) == 144


def test_a_wrong_ca_fails_fast_with_a_clear_message(tls_redis: RedisServer, tmp_path: Path) -> None:
    other = TlsFiles.make(tmp_path / "other", name="other-ca")
    app = client_app(tls_redis.url(), dispatch="celery", redis_tls_ca_file=str(other.ca))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        app.tasks["tasks.square"].delay(3)
    assert time.monotonic() - started < FAILS_WITHIN


def test_a_plain_url_against_a_tls_only_server_fails_fast(tls_redis: RedisServer) -> None:
    plain = tls_redis.url().replace("rediss://", "redis://")
    app = client_app(plain, dispatch="celery")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        app.tasks["tasks.square"].delay(3)
    assert time.monotonic() - started < FAILS_WITHIN


def test_tls_settings_reach_both_the_broker_and_the_result_store(tls: TlsFiles) -> None:
    from taskpool import Settings

    url = "rediss://127.0.0.1:6380/0"
    settings = Settings(broker_url=url, result_backend=url, redis_tls_ca_file=str(tls.ca))
    conf = celery_config(settings)
    for key in ("broker_use_ssl", "redis_backend_use_ssl"):
        assert conf[key]["ssl_ca_certs"] == str(tls.ca)
    assert celery_config(Settings())["broker_use_ssl"] is None


def test_a_server_that_asks_for_a_client_certificate_gets_it_from_the_settings(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    tls = TlsFiles.make(tmp_path / "mutual", require_client_cert=True)
    server = redis_factory(tls=tls)
    without = client_app(server.url(), dispatch="celery", redis_tls_ca_file=str(tls.ca))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        without.tasks["tasks.square"].delay(3)
    assert time.monotonic() - started < FAILS_WITHIN
    with_cert = client_app(
        server.url(), dispatch="celery", redis_tls_ca_file=str(tls.ca),
        redis_tls_cert_file=str(tls.client_cert), redis_tls_key_file=str(tls.client_key),
    )  # fmt: skip
    # Published over mutual TLS (no worker here: the message waits in the queue).
    assert with_cert.tasks["tasks.square"].delay(3).id
    probe = redis_py.Redis(host="127.0.0.1", port=server.port, **tls.client_options())
    try:
        assert probe.llen("celery") == 1
    finally:
        probe.close()


#: The name the TLS sentinel monitors.
TLS_MASTER = "tls-primary"


@pytest.fixture
def tls_sentinel(
    redis_factory: Callable[..., RedisServer], tls: TlsFiles, tmp_path: Path
) -> tuple[RedisServer, str]:
    """A TLS-only primary and a TLS-only sentinel that reaches it over TLS (tls-replication);
    the ``sentinel://`` URL of the sentinel."""
    primary = redis_factory(tls=tls)
    config = sentinel_config(tmp_path / "sentinel", TLS_MASTER, primary.port, quorum=1)
    sentinel = redis_factory(
        tls=tls, config_file=config, extra=("--sentinel", "--tls-replication", "yes")
    )
    return primary, f"sentinel://127.0.0.1:{sentinel.port}/0"


def sentinel_tls_settings(url: str, tls: TlsFiles, *, sentinel_tls: bool) -> Settings:
    return Settings(
        broker_url=url, result_backend=url, sentinel_master=TLS_MASTER, dispatch="celery",
        sentinel_tls=sentinel_tls, redis_tls_ca_file=str(tls.ca),
    )  # fmt: skip


def test_sentinels_and_the_redis_they_name_are_reached_over_tls(
    tls_sentinel: tuple[RedisServer, str],
    tls: TlsFiles,
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    primary, url = tls_sentinel
    env = {
        "TASKPOOL_SENTINEL_MASTER": TLS_MASTER,
        "TASKPOOL_SENTINEL_TLS": "yes",
        "TASKPOOL_REDIS_TLS_CA_FILE": str(tls.ca),
    }
    worker_factory(url, node_name("sentinel-tls"), **env)
    app = settings_app(sentinel_tls_settings(url, tls, sentinel_tls=True))
    assert app.conf.broker_transport == "taskpool.transport:SentinelTransport"
    result = app.tasks["tasks.square"].delay(9)
    assert isinstance(result, AsyncResult) and result.get(timeout=20) == 81
    # Through the worker and back by way of the primary the sentinel named.
    probe = redis_py.Redis(host="127.0.0.1", port=primary.port, **tls.client_options())
    try:
        assert probe.exists(f"celery-task-meta-{result.id}")
    finally:
        probe.close()
    # The health check asks the sentinel, then PINGs that primary, both over TLS.
    conf = app.conf
    tls_options, options = conf.redis_backend_use_ssl, conf.result_backend_transport_options
    probe_redis(url, FAILS_WITHIN, tls_options, options)


def test_sentinels_that_speak_tls_refuse_a_client_without_it_fast(
    tls_sentinel: tuple[RedisServer, str], tls: TlsFiles
) -> None:
    _, url = tls_sentinel
    app = settings_app(sentinel_tls_settings(url, tls, sentinel_tls=False))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        app.tasks["tasks.square"].delay(3)
    assert time.monotonic() - started < FAILS_WITHIN


def test_tls_settings_reach_the_sentinels_and_the_redis_they_name(tls: TlsFiles) -> None:
    url = "sentinel://127.0.0.1:26379"
    conf = celery_config(sentinel_tls_settings(url, tls, sentinel_tls=True))
    for key in ("broker_use_ssl", "redis_backend_use_ssl"):
        assert conf[key]["ssl_ca_certs"] == str(tls.ca)
    for options in ("broker_transport_options", "result_backend_transport_options"):
        sentinel_kwargs = conf[options]["sentinel_kwargs"]
        assert sentinel_kwargs["ssl"] is True and sentinel_kwargs["ssl_ca_certs"] == str(tls.ca)


def test_a_redis_url_with_celerys_tls_option_is_probed_over_tls_as_celery_connects(
    tls_redis: RedisServer, tls: TlsFiles
) -> None:
    # Celery's backend speaks TLS whenever redis_backend_use_ssl is set, whatever the scheme;
    # the health probe must reach the same server the same way, or calls fall back for nothing.
    plain = tls_redis.url().replace("rediss://", "redis://")
    use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tls.ca)}
    probe_redis(plain, FAILS_WITHIN, use_ssl)
    with pytest.raises(redis_py.exceptions.ConnectionError):
        probe_redis(plain, FAILS_WITHIN)
