"""Every benchmark ``python -m bench`` runs: its name, module, question, minutes and results.

bench/README.md opens with the same list as a table (``tests/unit/test_bench_layout.py`` keeps
the two equal). Minutes are for the default options on the 2-CPU machine of the committed
results, taken from the runs recorded there and in bench/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    #: ``python -m bench NAME``.
    name: str
    #: The module whose ``main()`` runs it, reading its options from ``sys.argv``.
    module: str
    question: str
    #: Wall-clock minutes with the default options.
    minutes: str
    #: What it writes under bench/results/, Markdown (file names in backticks).
    writes: str

    @property
    def command(self) -> str:
        return f"python -m bench {self.name}"


BENCHMARKS = (
    Benchmark(
        "compare",
        "bench.compare",
        "How does taskpool compare with stock Celery, Huey, Dramatiq and multiprocessing, "
        "workload by workload?",
        "15",
        "`compare_<workload>.json`, `comparison.png`",
    ),
    Benchmark(
        "cpu-share",
        "bench.cpu_share",
        "Where does each task queue spend CPU per tiny task: client, worker processes, Redis?",
        "2",
        "`cpu_share.json`",
    ),
    Benchmark(
        "profile-tiny",
        "bench.profile_tiny",
        "Which functions do taskpool's tiny tasks spend their time in, client and worker?",
        "5",
        "`profile_tiny.json`",
    ),
    Benchmark(
        "ablation",
        "bench.ablation",
        "Does any group of taskpool's Celery settings cost tiny-task throughput?",
        "3",
        "`tiny_ablation.json` (`--drain`: `tiny_ablation_drain.json`)",
    ),
    Benchmark(
        "long-client",
        "bench.long_client",
        "Does a client stall or grow after many tasks?",
        "22 (`stall` alone: 1)",
        "`long_client.json`",
    ),
    Benchmark(
        "map-throughput",
        "bench.map_throughput",
        "How fast is a map of a million ints through Redis, on the local pool and with "
        "`Pool(2).map`?",
        "1",
        "`map.json`",
    ),
    Benchmark(
        "map-stream",
        "bench.map_stream",
        "Do the caller and Redis stay flat while a generator of ten million ints is mapped?",
        "1",
        "`map_stream.json`",
    ),
    Benchmark(
        "prefetch",
        "bench.prefetch",
        "Which prefetch multiplier moves tiny tasks fastest?",
        "2",
        "`prefetch.json`",
    ),
    Benchmark(
        "transport-idle",
        "bench.transport_idle",
        "What does an idle consumer cost Redis, and how soon does it see a message?",
        "3",
        "`transport_idle.json`",
    ),
    Benchmark(
        "big-message",
        "bench.big_message",
        "How long does Redis serve no one else while a consumer takes one big message?",
        "1",
        "`big_message_redis<major>.json`",
    ),
    Benchmark(
        "redelivery",
        "bench.redelivery",
        "How long until a SIGKILLed worker's tasks run again: taskpool, stock Celery, Dramatiq?",
        "4",
        "`redelivery.json`",
    ),
    Benchmark(
        "failover",
        "bench.failover",
        "What does a Redis failover lose, with and without waiting for a replica?",
        "4",
        "`failover.json`",
    ),
)

BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}
