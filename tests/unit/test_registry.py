"""A user's task found by its full name or its last part; Celery's and taskpool's never."""

from __future__ import annotations

import pytest
from celery import Celery

from taskpool.registry import find_task, user_tasks


def body() -> None:
    pass


@pytest.fixture
def app() -> Celery:
    app = Celery("proj", set_as_current=False)
    for name in ("proj.tasks.square", "proj.reports.total", "proj.billing.total"):
        app.task(name=name, shared=False)(body)
    app.finalize()
    return app


def test_the_users_tasks_leave_out_celerys_and_taskpools(app: Celery) -> None:
    app.task(name="taskpool.internal", shared=False)(body)
    names = user_tasks(app)  # with the shared tasks other modules of this run defined
    assert {"proj.billing.total", "proj.reports.total", "proj.tasks.square"} <= set(names)
    assert names == sorted(names)
    assert not [name for name in names if name.startswith(("celery.", "taskpool."))]


def test_a_task_is_found_by_its_full_name_or_its_last_part(app: Celery) -> None:
    assert find_task(app, "proj.tasks.square").name == "proj.tasks.square"
    assert find_task(app, "square").name == "proj.tasks.square"


def test_a_last_part_two_tasks_share_is_refused_naming_both(app: Celery) -> None:
    with pytest.raises(LookupError, match="more than one task: proj.billing.total, proj.reports"):
        find_task(app, "total")


def test_an_unknown_or_built_in_name_is_refused_naming_the_known_tasks(app: Celery) -> None:
    for name in ("cube", "celery.chord_unlock"):
        with pytest.raises(
            LookupError, match=f"no task named '{name}'; known tasks: .*proj.billing"
        ):
            find_task(app, name)
