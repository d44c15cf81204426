"""What a local pool process does with one run, called here in-process.

``execute`` relies on Celery's eager retry path (Celery 5.7: ``Task.apply`` meets the ``Retry``
that ``self.retry()`` raises and calls ``retval.sig.apply(retries=...)``, which calls the task's
``apply`` with the retry's countdown or eta): it stands in for ``apply`` to send the retry back
to the caller. These tests pin that path; a Celery that takes another fails them here.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, states
from celery.exceptions import MaxRetriesExceededError
from kombu.serialization import dumps

from taskpool.pool_process import RunOptions, execute, task_ref

app = Celery("pinned-eager-retry", set_as_current=False)


@app.task(bind=True, name="pinned.flaky", max_retries=2, shared=False)
def flaky(self: Task, n: int, *, fail_runs: int) -> int:
    if self.request.retries < fail_runs:
        raise self.retry(countdown=7)
    return n * self.request.retries


def run(n: int, fail_runs: int, retries: int = 0) -> Any:
    payload = dumps([[n], {"fail_runs": fail_runs}], serializer="json")
    return execute(task_ref(flaky), payload, "id-1", RunOptions(retries=retries))


def test_a_retry_comes_back_to_the_caller_with_its_countdown_args_and_count() -> None:
    outcome = run(5, fail_runs=1)
    assert outcome.state == states.RETRY
    assert outcome.again is not None
    assert (outcome.again.delay, outcome.again.retries) == (7.0, 1)
    assert outcome.again.payload == dumps([[5], {"fail_runs": 1}], serializer="json")
    assert "apply" not in vars(flaky._get_current_object())  # the stand-in is gone after the run


def test_the_run_a_retry_sends_back_sees_its_count_and_succeeds() -> None:
    outcome = run(5, fail_runs=1, retries=1)
    assert outcome.state == states.SUCCESS
    assert outcome.value() == 5


def test_past_max_retries_celery_itself_ends_the_call() -> None:
    outcome = run(5, fail_runs=9, retries=2)
    assert outcome.state == states.FAILURE
    assert isinstance(outcome.error, MaxRetriesExceededError)
