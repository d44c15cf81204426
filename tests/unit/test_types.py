"""What a user's type checker says of their calls: ``.delay()`` returns one of the results,
and ``map`` refuses an option it does not have."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

USER_CODE = """
    from typing import assert_type

    from celery.result import AsyncResult, EagerResult

    import taskpool
    from taskpool import FallbackTask, LocalResult


    def use(task: FallbackTask) -> None:
        assert_type(task.delay(2, 3), AsyncResult | LocalResult | EagerResult)
        assert_type(taskpool.map(task, [1, 2], chunksize=10), list)
        taskpool.map(task, [1, 2], chunk_size=10)
"""


def test_a_users_calls_are_typed(tmp_path: Path) -> None:
    script = tmp_path / "user_code.py"
    script.write_text(textwrap.dedent(USER_CODE))
    out, err, status = api.run(
        [str(script), "--cache-dir", str(tmp_path / "cache"), "--python-version", "3.11",
         "--ignore-missing-imports", "--no-error-summary"]
    )  # fmt: skip
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out + err
    assert 'Unexpected keyword argument "chunk_size" for "map"' in errors[0]
    assert status == 1
