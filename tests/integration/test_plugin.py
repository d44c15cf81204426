"""The pytest plugin as another project meets it: its app is its own to name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_worker_fixture_with_no_app_named_is_a_usage_error_naming_the_option(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_proj.py").write_text("def test_it(taskpool_worker):\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_proj.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    said = run.stdout + run.stderr
    assert "taskpool_worker needs your Celery app: set taskpool_app in the [pytest] ini" in said
