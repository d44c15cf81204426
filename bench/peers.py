"""Huey's and Dramatiq's workers for ``python -m bench compare``: subprocesses stopped by PID.

Each runs with 2 worker processes on its own database of the bench's private Redis, as the
Celery workers do: ``huey_consumer bench.huey_app.huey -w 2 -k process -q`` (``-q``: warnings
only, as a Celery worker logs by default; Huey's default logs two lines per task) and
``dramatiq bench.dramatiq_app --processes 2 --threads 8`` (Dramatiq's defaults).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from taskpool.testing.processes import terminate

PEERS = ("huey", "dramatiq")

COMMANDS: dict[str, list[str]] = {
    "huey": [
        sys.executable, "-m", "huey.bin.huey_consumer", "bench.huey_app.huey",
        "-w", "2", "-k", "process", "-q",
    ],
    "dramatiq": [
        sys.executable, "-m", "dramatiq", "bench.dramatiq_app",
        "--processes", "2", "--threads", "8",
    ],
}  # fmt: skip

#: The variable each peer's app reads its Redis URL from (bench/huey_app.py, dramatiq_app.py).
URL_VARIABLES = {"huey": "BENCH_HUEY_URL", "dramatiq": "BENCH_DRAMATIQ_URL"}


class PeerWorker:
    """One peer worker in a process group of its own, so its worker processes go with it."""

    def __init__(self, impl: str, env: Mapping[str, str], cwd: Path, logfile: Path) -> None:
        self.impl = impl
        self.command = COMMANDS[impl]
        self.env, self.cwd, self.logfile = dict(env), cwd, logfile
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker is not running"
        return self.process.pid

    def start(self) -> PeerWorker:
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def wait_ready(self, probe: list[str], timeout: float = 60.0) -> PeerWorker:
        """Run ``probe`` (a client's first round trip) until it succeeds, while this lives."""
        assert self.process is not None
        client = subprocess.Popen(
            probe, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.impl} worker exited early:\n{self.log_tail()}")
                if client.poll() is not None:
                    _, err = client.communicate()
                    if client.returncode != 0:
                        raise RuntimeError(f"{self.impl} probe failed:\n{err.decode()[-4000:]}")
                    return self
                time.sleep(0.05)
            raise RuntimeError(
                f"{self.impl} worker gave no result in {timeout:g} s:\n{self.log_tail()}"
            )
        finally:
            terminate(client, 10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, SIGKILL past ``timeout``; then SIGKILL whatever is left in its group."""
        if self.process is None:
            return
        terminate(self.process, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def log_tail(self, chars: int = 4000) -> str:
        return self.logfile.read_text(errors="replace")[-chars:] if self.logfile.exists() else ""
