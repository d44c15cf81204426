"""Settings: defaults, the environment's names, and one clear error per bad value."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from taskpool import ConfigError, Settings
from taskpool.settings import VARIABLES
from tests.support.paths import REPO_ROOT


def test_defaults_work_on_a_laptop() -> None:
    settings = Settings.from_env({})
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.result_backend == "redis://localhost:6379/0"
    assert settings.dispatch == "auto"
    assert settings.local_start_method == "auto"
    assert settings.concurrency is None
    assert settings.processes >= 1
    assert settings.task_soft_time_limit is not None
    assert settings.task_time_limit > settings.task_soft_time_limit
    assert settings.visibility_timeout == 3600  # kombu's, for messages stock workers took


def test_taskpool_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "TASKPOOL_BROKER_URL": "redis://:pw@10.0.0.5:6380/2",
            "TASKPOOL_RESULT_BACKEND": "redis://127.0.0.1:6381/3",
            "TASKPOOL_DISPATCH": "LOCAL",
            "TASKPOOL_CONCURRENCY": "3",
            "TASKPOOL_BROKER_TIMEOUT": "0.25",
            "TASKPOOL_BROKER_RECHECK": "7",
            "TASKPOOL_TASK_TIME_LIMIT": "60",
            "TASKPOOL_TASK_SOFT_TIME_LIMIT": "50",
            "TASKPOOL_RESULT_EXPIRES": "120",
            "TASKPOOL_VISIBILITY_TIMEOUT": "90",
            "TASKPOOL_SOCKET_TIMEOUT": "2.5",
            "TASKPOOL_PREFETCH_MULTIPLIER": "8",
            "TASKPOOL_LOCAL_START_METHOD": "ForkServer",
        }
    )
    assert settings == Settings(
        broker_url="redis://:pw@10.0.0.5:6380/2",
        result_backend="redis://127.0.0.1:6381/3",
        dispatch="local",
        concurrency=3,
        broker_timeout=0.25,
        broker_recheck=7.0,
        task_time_limit=60.0,
        task_soft_time_limit=50.0,
        result_expires=120,
        visibility_timeout=90,
        socket_timeout=2.5,
        prefetch_multiplier=8,
        local_start_method="forkserver",
    )
    assert settings.processes == 3


def test_celery_names_are_honoured_and_taskpool_names_win() -> None:
    celery_only = Settings.from_env(
        {"CELERY_BROKER_URL": "redis://h1:6379/0", "CELERY_RESULT_BACKEND": "redis://h2:6379/1"}
    )
    assert (celery_only.broker_url, celery_only.result_backend) == (
        "redis://h1:6379/0",
        "redis://h2:6379/1",
    )
    both = Settings.from_env(
        {"CELERY_BROKER_URL": "redis://h1:6379/0", "TASKPOOL_BROKER_URL": "redis://h3:6379/0"}
    )
    assert both.broker_url == "redis://h3:6379/0"


def test_result_backend_follows_a_redis_broker_but_not_rabbitmq() -> None:
    assert (
        Settings.from_env({"TASKPOOL_BROKER_URL": "redis://h:7000/4"}).result_backend
        == "redis://h:7000/4"
    )
    amqp = Settings.from_env({"TASKPOOL_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    assert amqp.result_backend == "redis://localhost:6379/0"


def test_empty_values_count_as_unset() -> None:
    assert Settings.from_env({"TASKPOOL_DISPATCH": "", "TASKPOOL_CONCURRENCY": "  "}) == Settings()


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().dispatch = "local"  # type: ignore[misc]  # frozen: must raise


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("TASKPOOL_DISPATCH", "sometimes", "auto, celery, local"),
        ("TASKPOOL_LOCAL_START_METHOD", "vfork", "auto, fork, forkserver, spawn"),
        ("TASKPOOL_CONCURRENCY", "-2", "whole number greater than 0"),
        ("TASKPOOL_CONCURRENCY", "0", "whole number greater than 0"),
        ("TASKPOOL_CONCURRENCY", "two", "whole number greater than 0"),
        ("TASKPOOL_CONCURRENCY", "1.5", "whole number greater than 0"),
        ("TASKPOOL_BROKER_TIMEOUT", "-0.5", "number greater than 0"),
        ("TASKPOOL_BROKER_TIMEOUT", "soon", "number greater than 0"),
        ("TASKPOOL_BROKER_RECHECK", "nan", "number greater than 0"),
        ("TASKPOOL_TASK_TIME_LIMIT", "0", "number greater than 0"),
        ("TASKPOOL_RESULT_EXPIRES", "-1", "whole number greater than 0"),
        ("TASKPOOL_VISIBILITY_TIMEOUT", "x", "whole number greater than 0"),
        ("TASKPOOL_SOCKET_TIMEOUT", "-1", "number greater than 0"),
        ("TASKPOOL_PREFETCH_MULTIPLIER", "0", "whole number greater than 0"),
        ("TASKPOOL_RESTORE_INTERVAL", "0", "number greater than 0"),
        ("TASKPOOL_MAX_MESSAGE_BYTES", "16M", "whole number greater than 0"),
        ("TASKPOOL_MAX_DELIVERIES", "0", "whole number greater than 0"),
        ("TASKPOOL_MAX_MEMORY_PER_CHILD_MB", "-5", "whole number greater than 0"),
        ("TASKPOOL_MAX_TASKS_PER_CHILD", "0", "whole number greater than 0"),
        ("TASKPOOL_BROKER_URL", "not a url", "redis://"),
        ("TASKPOOL_BROKER_URL", "localhost:6379", "redis://"),
        ("TASKPOOL_BROKER_URL", "redis://localhost:sixty/0", "redis://"),
        ("TASKPOOL_BROKER_URL", "http://localhost/", "scheme among"),
        ("TASKPOOL_RESULT_BACKEND", "redis://localhost:6379/zero", "database number"),
        ("CELERY_BROKER_URL", "nonsense", "redis://"),
        ("TASKPOOL_RESULT_BACKEND", "nope://x", "scheme among"),
    ],
)
def test_a_bad_value_names_variable_value_and_what_is_allowed(
    variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert allowed in message


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TASKPOOL_BROKER_URL": "redis://:hunter2@localhost:notaport/0"})
    assert "hunter2" not in str(caught.value)
    assert "TASKPOOL_BROKER_URL" in str(caught.value)


def test_soft_time_limit_must_be_below_the_hard_one() -> None:
    with pytest.raises(ConfigError, match="TASKPOOL_SOFT_TIME_LIMIT|TASKPOOL_TASK_SOFT_TIME_LIMIT"):
        Settings.from_env({"TASKPOOL_TASK_TIME_LIMIT": "10", "TASKPOOL_TASK_SOFT_TIME_LIMIT": "10"})


def test_a_task_may_run_longer_than_the_visibility_timeout() -> None:
    """Liveness, not the visibility timeout, decides when a worker's tasks are handed out."""
    settings = Settings.from_env(
        {"TASKPOOL_TASK_TIME_LIMIT": "7200", "TASKPOOL_VISIBILITY_TIMEOUT": "300"}
    )
    assert (settings.task_time_limit, settings.visibility_timeout) == (7200.0, 300)
    assert settings.liveness_timeout == 3.0


def test_the_liveness_timeout_is_read_and_must_be_positive() -> None:
    assert Settings.from_env({"TASKPOOL_LIVENESS_TIMEOUT": "30"}).liveness_timeout == 30.0
    with pytest.raises(ConfigError, match="TASKPOOL_LIVENESS_TIMEOUT"):
        Settings.from_env({"TASKPOOL_LIVENESS_TIMEOUT": "0"})


def test_the_redis_password_joins_urls_that_have_none() -> None:
    settings = Settings.from_env(
        {
            "TASKPOOL_BROKER_URL": "redis://redis:6379/0",
            "TASKPOOL_RESULT_BACKEND": "redis://:own@redis:6379/1",
            "TASKPOOL_REDIS_PASSWORD": "p@ss word",
        }
    )
    assert settings.broker_url == "redis://:p%40ss%20word@redis:6379/0"
    assert settings.result_backend == "redis://:own@redis:6379/1"  # a password in the URL wins
    amqp = Settings.from_env(
        {"TASKPOOL_BROKER_URL": "amqp://u:p@h//", "TASKPOOL_REDIS_PASSWORD": "x"}
    )
    assert amqp.broker_url == "amqp://u:p@h//"


def test_routes_are_task_queue_pairs() -> None:
    settings = Settings.from_env({"TASKPOOL_ROUTES": "tasks.sum_of_squares=cpu, tasks.square=fast"})
    assert settings.routes == (("tasks.sum_of_squares", "cpu"), ("tasks.square", "fast"))
    with pytest.raises(ConfigError, match="TASKPOOL_ROUTES.*task=queue"):
        Settings.from_env({"TASKPOOL_ROUTES": "tasks.square"})


def test_setting_only_the_hard_limit_moves_the_others_with_it() -> None:
    short = Settings.from_env({"TASKPOOL_TASK_TIME_LIMIT": "120"})
    assert (short.task_time_limit, short.task_soft_time_limit) == (120.0, 108.0)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_numbers_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError, match="TASKPOOL_BROKER_TIMEOUT"):
        Settings.from_env({"TASKPOOL_BROKER_TIMEOUT": value})


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("concurrency", -4, "TASKPOOL_CONCURRENCY"),
        ("broker_timeout", float("nan"), "TASKPOOL_BROKER_TIMEOUT"),
        ("dispatch", "sometimes", "TASKPOOL_DISPATCH"),
        ("local_start_method", "clone", "TASKPOOL_LOCAL_START_METHOD"),
        ("broker_url", "localhost:6379", "TASKPOOL_BROKER_URL"),
        ("task_soft_time_limit", 999.0, "TASKPOOL_TASK_SOFT_TIME_LIMIT"),
    ],
)
def test_settings_built_directly_get_the_same_checks_as_from_env(
    field: str, value: object, variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings(**{field: value})  # type: ignore[arg-type]  # each bad value is the point


def test_bound_settings_do_not_keep_an_app_alive() -> None:
    import gc
    import weakref

    from taskpool import create_app
    from taskpool.settings import settings_of

    own = Settings(concurrency=3)
    app = create_app("bound", settings=own, set_as_current=False)
    assert settings_of(app) is own
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None


def test_tls_files_must_exist_and_a_client_certificate_needs_its_key(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="TASKPOOL_REDIS_TLS_CA_FILE"):
        Settings.from_env({"TASKPOOL_REDIS_TLS_CA_FILE": str(tmp_path / "missing.crt")})
    cert = tmp_path / "client.crt"
    cert.write_text("not checked here, only that it exists")
    with pytest.raises(ConfigError, match="needs its key"):
        Settings.from_env({"TASKPOOL_REDIS_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match="TASKPOOL_REDIS_TLS_VERIFY"):
        Settings.from_env({"TASKPOOL_REDIS_TLS_VERIFY": "maybe"})
    assert Settings.from_env({"TASKPOOL_REDIS_TLS_CA_FILE": str(cert)}).redis_tls_ca_file == str(
        cert
    )


SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3"


def test_a_list_of_sentinels_is_a_broker_and_result_store_with_its_master_name() -> None:
    settings = Settings.from_env(
        {
            "TASKPOOL_BROKER_URL": SENTINELS,
            "TASKPOOL_SENTINEL_MASTER": "jobs",
            "TASKPOOL_SENTINEL_PASSWORD": "s3ntinel",
            "TASKPOOL_REDIS_PASSWORD": "r3dis",
        }
    )
    assert settings.sentinel_master == "jobs" and settings.sentinel_password == "s3ntinel"
    # The Redis password reaches every sentinel URL; results follow the broker.
    assert settings.broker_url.count(":r3dis@") == 3
    assert settings.result_backend == settings.broker_url
    shown = repr(settings)
    assert "r3dis" not in shown and "s3ntinel" not in shown and ":**@10.0.0.3" in shown


def test_sentinels_without_a_master_name_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="TASKPOOL_SENTINEL_MASTER.*sentinel monitor NAME"):
        Settings.from_env({"TASKPOOL_BROKER_URL": SENTINELS})
    with pytest.raises(ConfigError, match="TASKPOOL_SENTINEL_MASTER"):
        Settings(result_backend=SENTINELS)


def test_tls_for_sentinels_is_refused_without_sentinels() -> None:
    assert Settings.from_env(
        {"TASKPOOL_BROKER_URL": SENTINELS, "TASKPOOL_SENTINEL_MASTER": "jobs",
         "TASKPOOL_SENTINEL_TLS": "yes"}
    ).sentinel_tls  # fmt: skip
    with pytest.raises(ConfigError, match="TASKPOOL_SENTINEL_TLS.*rediss://"):
        Settings.from_env({"TASKPOOL_SENTINEL_TLS": "yes"})


@pytest.mark.parametrize(
    "url",
    ["sentinel://a:26379;redis://b:6379", "sentinel://a:26379;sentinel://b:port", "sentinel://a;b"],
)
def test_a_broken_sentinel_list_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="TASKPOOL_BROKER_URL"):
        Settings.from_env({"TASKPOOL_BROKER_URL": url, "TASKPOOL_SENTINEL_MASTER": "jobs"})


def test_waiting_for_replicas_is_off_unless_asked_and_then_positive() -> None:
    assert Settings().redis_wait_replicas is None
    settings = Settings.from_env(
        {"TASKPOOL_REDIS_WAIT_REPLICAS": "1", "TASKPOOL_REDIS_WAIT_TIMEOUT": "0.5"}
    )
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout) == (1, 0.5)
    with pytest.raises(ConfigError, match="TASKPOOL_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"TASKPOOL_REDIS_WAIT_REPLICAS": "0"})


def test_a_password_with_a_raw_slash_is_refused_without_showing_it() -> None:
    """urlsplit reads redis://:p@ss/w0rd@host/0 as host ss and database "w0rd@host/0"."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TASKPOOL_BROKER_URL": "redis://:p@ss/w0rd@localhost:6379/0"})
    assert "database number" in str(caught.value) and "%2F" in str(caught.value)
    assert "w0rd" not in str(caught.value)


def test_settings_built_by_hand_and_from_the_environment_agree() -> None:
    # Settings(task_time_limit=10) refused a soft limit of 270 nobody had set.
    assert Settings(task_time_limit=10) == Settings.from_env({"TASKPOOL_TASK_TIME_LIMIT": "10"})
    assert Settings() == Settings.from_env({})
    assert Settings(task_time_limit=10).task_soft_time_limit == 9.0


def test_the_readmes_settings_table_names_every_variable_once() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("## Layout")]
    rows = re.findall(r"^\| `(TASKPOOL_[A-Z_]+)`(?:, `(TASKPOOL_[A-Z_]+)`)?", table, re.M)
    named = [name for row in rows for name in row if name]
    assert sorted(named) == sorted(VARIABLES)


def test_an_unknown_worker_pool_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"TASKPOOL_WORKER_POOL='threads'.*prefork, fetching"):
        Settings.from_env({"TASKPOOL_WORKER_POOL": "threads"})
