"""taskpool's settings are Celery settings too: read from the app's configuration however it
is given, under the environment, with the project's own Celery keys kept."""

from __future__ import annotations

import types
from collections.abc import Iterator

import pytest
from celery import Celery

import taskpool
from taskpool import ConfigError, FallbackTask
from taskpool.settings import CELERY_KEYS, CONF_KEYS, VARIABLES, settings_of

PROJECT = types.SimpleNamespace(
    broker_url="redis://127.0.0.1:1/3",
    result_expires=60,
    task_time_limit=40,
    taskpool_dispatch="local",
    taskpool_liveness_timeout=1.5,
    broker_transport_options={"global_keyprefix": "proj:"},
)
#: The same project as Django keeps it, for config_from_object(..., namespace="CELERY").
DJANGO = types.SimpleNamespace(
    CELERY_BROKER_URL="redis://127.0.0.1:1/4",
    CELERY_TASK_TIME_LIMIT=40,
    CELERY_TASKPOOL_DISPATCH="local",
)


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [*VARIABLES, "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"]:
        monkeypatch.delenv(name, raising=False)
    yield


def check_project_settings(app: Celery) -> None:
    assert app.conf.broker_url == "redis://127.0.0.1:1/3"
    assert app.conf.result_expires == 60
    assert app.conf.task_time_limit == 40
    assert app.conf.task_soft_time_limit == 36  # follows the hard limit, as TASKPOOL_* does
    settings = settings_of(app)
    assert settings.dispatch == "local"
    assert settings.broker_url == app.conf.broker_url
    assert settings.task_time_limit == 40
    options = app.conf.broker_transport_options
    assert options["liveness_timeout"] == 1.5
    assert options["global_keyprefix"] == "proj:"  # the project's options join taskpool's
    assert app.conf.broker_transport == "taskpool.transport:Transport"
    assert app.conf.task_acks_late is True


def test_create_app_then_config_from_object_keeps_the_projects_settings() -> None:
    app = taskpool.create_app("proj")
    app.config_from_object(PROJECT)
    check_project_settings(app)


def test_config_from_object_after_the_configuration_was_read() -> None:
    app = taskpool.create_app("proj")
    assert app.conf.broker_url == "redis://localhost:6379/0"
    app.config_from_object(PROJECT)  # raised RecursionError when taskpool reloaded it itself
    check_project_settings(app)


def test_configure_gives_a_plain_app_the_same_configuration() -> None:
    app = taskpool.configure(Celery("proj", task_cls=FallbackTask))
    app.config_from_object(PROJECT)
    check_project_settings(app)


def test_conf_update_before_the_load_is_read_too() -> None:
    app = taskpool.create_app("proj")
    app.conf.update(taskpool_dispatch="celery", worker_concurrency=1)
    assert settings_of(app).dispatch == "celery"
    assert settings_of(app).concurrency == 1
    assert app.conf.worker_concurrency == 1


def test_django_settings_with_a_namespace() -> None:
    app = taskpool.create_app("proj")
    app.config_from_object(DJANGO, namespace="CELERY")
    assert app.conf.broker_url == "redis://127.0.0.1:1/4"
    assert app.conf.task_time_limit == 40
    assert settings_of(app).dispatch == "local"
    assert settings_of(app).task_time_limit == 40


def test_a_plain_app_reads_its_taskpool_keys_without_configure() -> None:
    app = Celery("proj", task_cls=FallbackTask)
    app.conf.update(taskpool_dispatch="local", taskpool_json_safe_integers=True)
    settings = settings_of(app)
    assert (settings.dispatch, settings.json_safe_integers) == ("local", True)
    assert app.conf.broker_transport is None  # no hardening without taskpool.configure


def test_the_environment_wins_over_the_configuration_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKPOOL_DISPATCH", "celery")
    monkeypatch.setenv("TASKPOOL_TASK_TIME_LIMIT", "20")
    app = taskpool.create_app("proj")
    app.config_from_object(PROJECT)
    assert settings_of(app).dispatch == "celery"
    assert app.conf.task_time_limit == settings_of(app).task_time_limit == 20


def test_celerys_own_broker_variable_wins_over_the_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:2/5")
    app = taskpool.create_app("proj")
    app.config_from_object(PROJECT)
    assert app.conf.broker_url == settings_of(app).broker_url == "redis://127.0.0.1:2/5"


def test_a_variable_that_a_key_set_in_code_overrides_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKPOOL_TASK_TIME_LIMIT", "20")
    app = taskpool.create_app("proj")
    app.conf.update(task_time_limit=10)
    with pytest.raises(ConfigError, match=r"TASKPOOL_TASK_TIME_LIMIT.*task_time_limit='10'"):
        app.conf.task_time_limit  # noqa: B018 - the read loads the configuration


def test_the_projects_own_choices_win_over_taskpools_defaults() -> None:
    app = taskpool.create_app("proj")
    app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1)
    assert app.conf.task_acks_late is False
    assert app.conf.worker_prefetch_multiplier == settings_of(app).prefetch_multiplier == 1


def test_a_misspelt_variable_is_refused_with_the_name_it_meant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKPOOL_BROKER_URI", "redis://:secret@127.0.0.1:1/0")
    app = taskpool.create_app("proj")
    with pytest.raises(ConfigError, match="did you mean TASKPOOL_BROKER_URL") as raised:
        app.conf.broker_url  # noqa: B018
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("key", "meant"),
    [("taskpool_dispach", "taskpool_dispatch"), ("taskpool_broker_url", "broker_url")],
)
def test_a_misspelt_key_is_refused_with_the_key_it_meant(key: str, meant: str) -> None:
    app = Celery("proj", task_cls=FallbackTask)
    app.conf.update({key: "x"})
    with pytest.raises(ConfigError, match=f"app.conf {key}.*did you mean {meant}"):
        settings_of(app)


def test_a_bad_value_in_the_configuration_names_its_key() -> None:
    app = taskpool.create_app("proj")
    app.conf.update(taskpool_liveness_timeout=-1)
    with pytest.raises(ConfigError, match="app.conf taskpool_liveness_timeout='-1'"):
        settings_of(app)


def test_configure_after_the_configuration_was_read_is_refused() -> None:
    app = Celery("proj", task_cls=FallbackTask)
    assert app.conf.broker_url is None
    with pytest.raises(ConfigError, match="before the app's configuration is first read"):
        taskpool.configure(app)


def test_every_variable_has_one_conf_key() -> None:
    assert len(CONF_KEYS) == len(VARIABLES) - 1  # TASKPOOL_APP names the app: command only
    celerys = {key for key in CONF_KEYS if not key.startswith("taskpool_")}
    assert celerys == set(CELERY_KEYS.values())
    assert celerys <= set(Celery("proj").conf)  # each is a key Celery itself reads
