"""A real ``celery -A APP worker -P prefork`` subprocess, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from taskpool.testing.processes import terminate


def node_name(name: str) -> str:
    """A Celery node name on this host, as ``-n name@%h`` would expand it."""
    return f"{name}@{socket.gethostname()}"


def worker_env(broker_url: str, **extra: str) -> dict[str, str]:
    """This process's environment with taskpool and Celery pointed at ``broker_url`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
    env.update(TASKPOOL_BROKER_URL=broker_url, TASKPOOL_RESULT_BACKEND=broker_url)
    env.update(extra)  # a result store of its own, say
    return env


#: How long ``CeleryWorker.drain`` waits for the tasks a worker holds.
DRAIN_TIMEOUT = 10.0


class CeleryWorker:
    """One worker node; its pool processes live in the worker's own process group."""

    def __init__(
        self,
        env: Mapping[str, str],
        node: str,
        logfile: Path,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
        command: list[str] | None = None,
        *,
        app: str = "tasks",
        cwd: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.node = node
        self.logfile = logfile
        self.concurrency = concurrency
        self.extra = extra
        #: A whole command line to run instead of the default one (``-n node`` is appended).
        self.command = command
        #: The ``-A`` argument, and the directory it is found from (default: this one).
        self.app, self.cwd = app, cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker is not running"
        return self.process.pid

    def start(self) -> CeleryWorker:
        command = [*self.command, "-n", self.node, *self.extra] if self.command else [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-P", "prefork", "-c", str(self.concurrency), "-n", self.node,
            "-l", "info", "--without-gossip", "--without-mingle", *self.extra,
        ]  # fmt: skip
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so its pool children go with it
            )  # fmt: skip
        return self

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> CeleryWorker:
        """Poll with Celery's own ping until this node answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.node} exited early:\n{self.log_tail()}")
            try:
                if app.control.ping(destination=[self.node], timeout=0.5):
                    return self
            except (OSError, ConnectionError, RedisConnectionError, OperationalError):
                # A connection the broker closed (a server just started on a port another
                # had a moment ago): the next ping opens a new one.
                time.sleep(0.1)
        raise RuntimeError(
            f"worker {self.node} did not answer a ping in {timeout}s:\n{self.log_tail()}"
        )

    def wait_exit(self, timeout: float) -> int:
        """The worker's exit code, once it exits by itself within ``timeout`` seconds."""
        assert self.process is not None
        return self.process.wait(timeout)

    def pool_pids(self) -> set[int]:
        """PIDs of the worker's prefork pool processes (its direct children)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def stop(self, timeout: float = 20.0, *, drain: Celery | None = None) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the group if it has not exited within ``timeout``.

        With ``drain`` (an app on the worker's broker), the worker first stops consuming and
        finishes what it holds (``drain``). A task that finishes during the warm shutdown
        otherwise stalls it for 20 s: its pool process waits for the worker to read the
        result (billiard's ``_ensure_messages_consumed``), and the stopping worker no longer
        reads.
        """
        if self.process is None:
            return
        if drain is not None and self.process.poll() is None:
            self.drain(drain)
        terminate(self.process, timeout)
        self._kill_leftover_group()

    def drain(self, app: Celery, timeout: float = DRAIN_TIMEOUT) -> bool:
        """Stop consuming every queue and wait until no task is running or reserved; False if
        that took longer than ``timeout`` (the worker is then stopped all the same)."""
        control = app.control
        deadline = time.monotonic() + timeout
        try:
            queues = control.inspect([self.node], timeout=1.0).active_queues() or {}
            for queue in queues.get(self.node, []):
                control.cancel_consumer(
                    queue["name"], destination=[self.node], reply=True, timeout=1.0
                )
            while time.monotonic() < deadline:
                inspect = control.inspect([self.node], timeout=1.0)
                active, reserved = inspect.active() or {}, inspect.reserved() or {}
                if not active.get(self.node) and not reserved.get(self.node):
                    return True
                time.sleep(0.1)
        except Exception:  # a broker gone first: nothing more to finish through it
            return False
        return False

    def _kill_leftover_group(self) -> None:
        # The group id is the worker's own PID; anything left in it is one of its pool processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def log_tail(self, chars: int = 4000) -> str:
        return self.logfile.read_text(errors="replace")[-chars:] if self.logfile.exists() else ""
