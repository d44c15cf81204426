"""Tables, targets and the plot of ``python -m bench compare``, from ``compare_*.json`` files."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

LABELS = {
    "single": "single process loop",
    "threads2": "ThreadPool(2)",
    "pool2": "multiprocessing Pool(2)",
    "ours-local-cold": "taskpool local pool, started by the call",
    "pool2-script": "whole process: `python -c` script, Pool(2).map, lines to stdout",
    "ours-local-cli": "whole process: `taskpool map square --range N`, local pool, lines to stdout",
    "ours-local": "taskpool local pool (dispatch=local)",
    "ours": "taskpool via Redis, worker -c 2",
    "ours-fetching": "taskpool via Redis, worker -c 2, fetching pool",
    "stock": "stock Celery via Redis, worker -c 2",
    "huey": "Huey via Redis, consumer -w 2 -k process",
    "dramatiq": "Dramatiq via Redis, --processes 2 --threads 8",
}
SHORT = {
    "single": "1 process",
    "threads2": "ThreadPool(2)",
    "pool2": "Pool(2)",
    "ours-local-cold": "taskpool local (cold)",
    "pool2-script": "Pool(2) script, whole",
    "ours-local-cli": "taskpool CLI, whole",
    "ours-local": "taskpool local",
    "ours": "taskpool broker",
    "ours-fetching": "taskpool fetching",
    "stock": "stock Celery",
    "huey": "Huey",
    "dramatiq": "Dramatiq",
}
#: Map rows timed as whole processes, from start to exit; compared with the Pool(2).map script.
WHOLE_PROCESS = ("pool2-script", "ours-local-cli")
#: The other task queues taskpool is measured against: every row of the tiny and latency
#: tables is also given as a ratio to the fastest of these.
PEERS = ("stock", "huey", "dramatiq")


def stat(samples: list[float | None]) -> dict[str, float] | None:
    values = [v for v in samples if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(samples: list[float | None], digits: int = 3, scale: float = 1.0) -> str:
    s = stat(samples)
    if s is None:
        return "-"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def med(samples: list[float | None]) -> float:
    s = stat(samples)
    return s["median"] if s else float("nan")


def load(directory: Path, workload: str) -> dict[str, Any] | None:
    path = directory / f"compare_{workload}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fastest_peer(samples: dict[str, Any], key: str, lowest: bool) -> tuple[str, float] | None:
    """The peer with the best median ``key`` (highest, or lowest with ``lowest``), if any ran."""
    ran = [(impl, med(samples[impl][key])) for impl in PEERS if impl in samples]
    if not ran:
        return None
    return (min if lowest else max)(ran, key=lambda item: item[1])


def ratio(value: float, best: tuple[str, float] | None) -> str:
    return "-" if best is None else f"{value / best[1]:.2f}x"


def tiny_table(data: dict[str, Any]) -> str:
    s = data["samples"]
    stock = med(s["stock"]["total_s"]) if "stock" in s else float("nan")
    best = fastest_peer(s, "tasks_per_s", lowest=False)
    rows = []
    for impl, figures in s.items():
        rows.append(
            [
                LABELS[impl],
                fmt(figures["enqueue_s"]),
                fmt(figures["total_s"]),
                f"{med(figures['tasks_per_s']):,.0f}",
                f"{stock / med(figures['total_s']):.2f}x",
                ratio(med(figures["tasks_per_s"]), best),
            ]
        )
    header = ["implementation", "enqueue s", "end-to-end s", "tasks/s", "speed vs stock"]
    header.append("tasks/s vs fastest peer")
    note = "" if best is None else f"\n\nfastest peer: {SHORT[best[0]]}, {best[1]:,.0f} tasks/s"
    return table(header, rows) + note


def map_baseline(samples: dict[str, Any], impl: str) -> float:
    """The seconds a map row is compared with: Pool(2).map, in process or as a whole script."""
    reference = "pool2-script" if impl in WHOLE_PROCESS else "pool2"
    return med(samples[reference]["total_s"]) if reference in samples else float("nan")


def map_table(data: dict[str, Any]) -> str:
    s, n = data["samples"], data["sizes"]["map"]
    rows = []
    for impl, figures in s.items():
        label = "stock Celery `square.chunks(..., n/8)`" if impl == "stock" else LABELS[impl]
        pool = map_baseline(s, impl)
        for key, inputs in (("total_s", ""), ("list_total_s", ", the inputs as a list")):
            if key in figures:
                seconds = med(figures[key])
                rows.append(
                    [
                        label + inputs,
                        fmt(figures[key]),
                        f"{n / seconds:,.0f}",
                        f"{pool / seconds:.2f}x",
                    ]
                )
    header = ["implementation", "seconds", "inputs/s"]
    header.append("throughput vs Pool(2).map (whole process: vs the Pool(2) script)")
    return table(header, rows)


def cpu_table(data: dict[str, Any]) -> str:
    s = data["samples"]
    single = med(s["single"]["total_s"]) if "single" in s else float("nan")
    rows = [
        [LABELS[impl], fmt(f["total_s"]), f"{single / med(f['total_s']):.2f}x"]
        for impl, f in s.items()
    ]
    return table(["implementation", "seconds", "speed-up vs 1 process"], rows)


def latency_table(data: dict[str, Any]) -> str:
    s = data["samples"]
    best = fastest_peer(s, "p50_ms", lowest=True)
    rows = [
        [
            LABELS[impl],
            fmt(f["p50_ms"], 2),
            fmt(f["p95_ms"], 2),
            fmt(f["p99_ms"], 2),
            fmt(f["mean_ms"], 2),
            ratio(med(f["p50_ms"]), best),
        ]
        for impl, f in s.items()
    ]
    header = ["implementation", "p50 ms", "p95 ms", "p99 ms", "mean ms"]
    header.append("p50 vs fastest peer (lower is faster)")
    note = "" if best is None else f"\n\nfastest peer: {SHORT[best[0]]}, p50 {best[1]:.2f} ms"
    return table(header, rows) + note


def down_label(key: str, f: dict[str, Any]) -> str:
    condition = "port closed" if f["condition"] == "refused" else "accepts, never answers"
    who = f"taskpool, mode {f['mode']}" if f["impl"] == "ours" else "stock Celery"
    return f"{condition}: {who}"


def down_table(data: dict[str, Any]) -> str:
    rows = []
    for key, f in data["samples"].items():
        outcomes = sorted(set(f["outcome"]))
        rows.append(
            [
                down_label(key, f),
                "; ".join(outcomes),
                fmt(f.get("delay_s", [None])),
                fmt(f["call_s"]),
                fmt(f["whole_s"]),
            ]
        )
    header = ["broker down", "outcome", "`.delay()` s", "`.delay().get()` s", "whole `python -c` s"]
    return table(header, rows)


def start_table(data: dict[str, Any]) -> str:
    rows = [[LABELS[impl], fmt(f["total_s"])] for impl, f in data["samples"].items()]
    return table(["worker", "start to first result, s"], rows)


def drain_table(data: dict[str, Any]) -> str:
    s = data["samples"]
    best = fastest_peer(s, "tasks_per_s", lowest=False)
    rows = []
    for impl, f in s.items():
        rate = stat(f["tasks_per_s"])
        shown = "-" if rate is None else "{median:,.0f} ({min:,.0f}-{max:,.0f})".format(**rate)
        rows.append([LABELS[impl], shown, ratio(med(f["tasks_per_s"]), best)])
    header = ["worker", "results stored per second", "vs fastest peer"]
    note = "" if best is None else f"\n\nfastest peer: {SHORT[best[0]]}, {best[1]:,.0f} tasks/s"
    return table(header, rows) + note


TABLES = {
    "tiny": ("1. many tiny tasks", tiny_table),
    "map": ("2. bulk map", map_table),
    "cpu": ("3. CPU-bound calls", cpu_table),
    "latency": ("4. round-trip latency", latency_table),
    "down": ("5. broker down", down_table),
    "start": ("6. worker start", start_table),
    "drain": ("7. worker drain", drain_table),
}


def targets(found: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for every target the issue sets."""
    out: list[tuple[str, str, bool]] = []
    if "tiny" in found:
        s = found["tiny"]["samples"]
        if "ours" in s and "stock" in s:
            ratio = med(s["stock"]["total_s"]) / med(s["ours"]["total_s"])
            out.append(("tiny: taskpool >= 1.0x stock end to end", f"{ratio:.2f}x", ratio >= 1.0))
            out.append(("tiny (stretch): >= 1.3x stock", f"{ratio:.2f}x", ratio >= 1.3))
    if "map" in found:
        s = found["map"]["samples"]
        pool = med(s["pool2"]["total_s"])
        for impl, bound in (("ours", 0.5), ("ours-local", 0.9), ("ours-local-cold", 0.9)):
            for key, inputs in (("total_s", ""), ("list_total_s", ", list input")):
                if key in s.get(impl, {}):
                    ratio = pool / med(s[impl][key])
                    name = f"map: {SHORT[impl]}{inputs} >= {bound}x Pool(2).map"
                    out.append((name, f"{ratio:.2f}x", ratio >= bound))
        if "ours-local-cli" in s and "pool2-script" in s:
            ratio = med(s["pool2-script"]["total_s"]) / med(s["ours-local-cli"]["total_s"])
            name = "map: CLI whole process >= 0.5x Pool(2).map script"
            out.append((name, f"{ratio:.2f}x", ratio >= 0.5))
    if "latency" in found:
        s = found["latency"]["samples"]
        if "ours" in s and "stock" in s:
            for key in ("p50_ms", "p99_ms"):
                ours, stock = med(s["ours"][key]), med(s["stock"][key])
                out.append(
                    (
                        f"latency: taskpool {key[:3]} <= stock",
                        f"{ours:.2f} vs {stock:.2f} ms",
                        ours <= stock,
                    )
                )
    if "down" in found:
        s = found["down"]["samples"]
        for key, bound, what in (
            ("ours-auto-refused", 0.3, "result"),
            ("ours-auto-silent", 1.5, "result"),
            ("ours-celery-refused", 1.0, "error"),
            ("ours-celery-silent", 1.0, "error"),
        ):
            if key in s:
                worst = max((v for v in s[key]["call_s"] if v is not None), default=float("inf"))
                ok = all(o.startswith(what) for o in s[key]["outcome"]) and worst <= bound
                name = f"down: {down_label(key, s[key])} -> {what} <= {bound} s"
                out.append((name, f"max {worst:.3f} s ({s[key]['outcome'][0]})", ok))
    out.extend(peer_targets(found))
    return out


#: taskpool's two worker pools, each held to the goals against the peers.
OURS = ("ours", "ours-fetching")


def peer_targets(found: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Each taskpool pool against the fastest peer: tiny tasks end to end, latency p50 (against
    Huey's), a worker's drain (against the faster of Huey and Dramatiq)."""
    out: list[tuple[str, str, bool]] = []
    if "tiny" in found:
        s = found["tiny"]["samples"]
        best = fastest_peer(s, "tasks_per_s", lowest=False)
        for impl in (i for i in OURS if i in s and best is not None):
            assert best is not None
            rate = med(s[impl]["tasks_per_s"])
            name = f"tiny: {SHORT[impl]} >= the fastest peer ({SHORT[best[0]]})"
            out.append((name, f"{rate:,.0f} vs {best[1]:,.0f} tasks/s", rate >= best[1]))
    if "latency" in found:
        s = found["latency"]["samples"]
        for impl in (i for i in OURS if i in s and "huey" in s):
            ours, huey = med(s[impl]["p50_ms"]), med(s["huey"]["p50_ms"])
            name = f"latency: {SHORT[impl]} p50 <= Huey's"
            out.append((name, f"{ours:.2f} vs {huey:.2f} ms", ours <= huey))
    if "drain" in found:
        s = found["drain"]["samples"]
        best = fastest_peer({k: v for k, v in s.items() if k != "stock"}, "tasks_per_s", False)
        for impl in (i for i in OURS if i in s and best is not None):
            assert best is not None
            rate = med(s[impl]["tasks_per_s"])
            name = f"drain: {SHORT[impl]} >= the faster of Huey and Dramatiq ({SHORT[best[0]]})"
            out.append((name, f"{rate:,.0f} vs {best[1]:,.0f} tasks/s", rate >= best[1]))
    return out


def targets_text(found: dict[str, dict[str, Any]]) -> str:
    """One line per target: whether it holds, the target, the figure."""
    return "\n".join(
        f"[{'holds' if ok else 'MISSED'}] {name}: {value}" for name, value, ok in targets(found)
    )


def headline(found: dict[str, dict[str, Any]]) -> str:
    """The short table for the top-level README."""
    rows = []
    if "tiny" in found:
        s, n = found["tiny"]["samples"], found["tiny"]["sizes"]["tiny"]
        rows.append(
            [
                f"{n:,} tiny tasks, end to end (tasks/s)",
                f"{med(s['ours']['tasks_per_s']):,.0f}",
                f"{med(s['stock']['tasks_per_s']):,.0f}",
                f"{med(s['pool2']['tasks_per_s']):,.0f}",
            ]
        )
    if "map" in found:
        s, n = found["map"]["samples"], found["map"]["sizes"]["map"]
        rows.append(
            [
                f"map `square` over {n:,} ints (s)",
                f"{med(s['ours']['total_s']):.2f} "
                f"(local pool: {med(s['ours-local']['total_s']):.2f})",
                f"{med(s['stock']['total_s']):.2f} (`chunks`)",
                f"{med(s['pool2']['total_s']):.2f}",
            ]
        )
    if "cpu" in found:
        s, sizes = found["cpu"]["samples"], found["cpu"]["sizes"]
        rows.append(
            [
                f"{sizes['cpu_calls']} x `sum_of_squares({sizes['cpu']:,})` (s)",
                f"{med(s['ours']['total_s']):.2f} "
                f"(local pool: {med(s['ours-local']['total_s']):.2f})",
                f"{med(s['stock']['total_s']):.2f}",
                f"{med(s['pool2']['total_s']):.2f} (ThreadPool(2): "
                f"{med(s['threads2']['total_s']):.2f})",
            ]
        )
    if "latency" in found:
        s = found["latency"]["samples"]
        rows.append(
            [
                "`square.delay(7).get()` p50 / p99 (ms)",
                f"{med(s['ours']['p50_ms']):.2f} / {med(s['ours']['p99_ms']):.2f}",
                f"{med(s['stock']['p50_ms']):.2f} / {med(s['stock']['p99_ms']):.2f}",
                "-",
            ]
        )
    if "down" in found:
        s = found["down"]["samples"]

        def down_cell(key: str) -> str:
            f = s[key]
            if f["call_s"][0] is None:
                return f["outcome"][0].split(",")[0] + ")"
            verb = "result" if f["outcome"][0] == "result" else f["outcome"][0].split(": ")[-1]
            return f"{verb} in {med(f['call_s']):.2f} s"

        for condition, text in (("refused", "port closed"), ("silent", "never answers")):
            rows.append(
                [
                    f"broker down ({text}): `.delay(7).get()`",
                    f"{down_cell(f'ours-auto-{condition}')}",
                    down_cell(f"stock-{condition}"),
                    "-",
                ]
            )
    if "start" in found:
        s = found["start"]["samples"]
        rows.append(
            [
                "worker start to first result (s)",
                f"{med(s['ours']['total_s']):.2f}",
                f"{med(s['stock']['total_s']):.2f}",
                "-",
            ]
        )
    return table(["workload", "taskpool", "stock Celery", "multiprocessing"], rows)


def render(directory: Path, selected: list[str]) -> None:
    """Print every table found, the targets and the headline; draw comparison.png."""
    found = {w: d for w in TABLES if (d := load(directory, w)) is not None}
    if not found:
        raise SystemExit(f"no compare_*.json in {directory}")
    any_data = next(iter(found.values()))
    m = any_data["machine"]
    print(
        f"\nmachine: {m['cpus']} CPUs, Python {m['python']}, Redis {m.get('redis', '?')}, "
        f"{m['platform']}; {any_data['rounds']} rounds, profile {any_data['profile']}"
    )
    packages = [
        f"{name} {m[f'{name}_version']}"
        for name in ("celery", "kombu", "redis", "huey", "dramatiq")
        if f"{name}_version" in m
    ]
    if packages:
        print("packages: " + ", ".join(packages).replace("redis ", "redis-py ", 1))
    for workload, (title, make) in TABLES.items():
        if workload in found and workload in selected:
            print(f"\n{title} ({describe(workload, found[workload]['sizes'])})\n")
            print(make(found[workload]))
    print("\ntargets\n")
    print(textwrap.indent(targets_text(found), "  "))
    print("\nheadline (README)\n")
    print(headline(found))
    path = plot(found, directory / "comparison.png")
    print(f"\nwrote {path}")


def describe(workload: str, sizes: dict[str, Any]) -> str:
    return {
        "tiny": f"{sizes['tiny']:,} x square.delay(i), all results collected",
        "map": f"square over {sizes['map']:,} ints, in order",
        "cpu": f"{sizes['cpu_calls']} x sum_of_squares({sizes['cpu']:,})",
        "latency": f"{sizes['latency']:,} sequential square.delay(7).get(), medians of rounds",
        "down": f"fresh subprocess per call, capped at {sizes['down_cap_s']:g} s",
        "start": "celery -A <app> worker -P prefork -c 2, from Popen to the first result",
        "drain": (
            f"{sizes['drain']:,} x square(i) queued before the worker starts; results stored "
            "per second, from the first 5% to the last, no client running"
        ),
    }[workload]


def plot(found: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "ours": "#1f77b4",
        "ours-local": "#6baed6",
        "ours-local-cold": "#9ecae1",
        "ours-local-cli": "#3182bd",
        "pool2-script": "#74c476",
        "stock": "#d62728",
        "huey": "#ff7f0e",
        "dramatiq": "#9467bd",
        "pool2": "#2ca02c",
        "threads2": "#98df8a",
        "single": "#7f7f7f",
    }
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    panels = iter(axes.flat)

    def bars(ax: Any, names: list[str], impls: list[str], series: list[list[float | None]]) -> None:
        stats = [stat(v) for v in series]
        values = [s["median"] if s else 0.0 for s in stats]
        low = [s["median"] - s["min"] if s else 0.0 for s in stats]
        high = [s["max"] - s["median"] if s else 0.0 for s in stats]
        y = range(len(names))
        ax.barh(
            y, values, xerr=[low, high], color=[colors.get(i, "#aaaaaa") for i in impls], capsize=3
        )
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        for index, value in enumerate(values):
            ax.annotate(
                f" {value:,.3g}", (value, index), va="center", fontsize=8, annotation_clip=False
            )

    if "tiny" in found:
        ax = next(panels)
        s = found["tiny"]["samples"]
        impls = [i for i in s if i != "single"]
        bars(ax, [SHORT[i] for i in impls], impls, [s[i]["tasks_per_s"] for i in impls])
        ax.set_xscale("log")
        ax.set_title(f"{found['tiny']['sizes']['tiny']:,} tiny tasks: tasks/s (log)")
    if "map" in found:
        ax = next(panels)
        s = found["map"]["samples"]
        names, impls, series = [], [], []
        for impl in s:
            pool = map_baseline(s, impl)
            for key, suffix in (("total_s", ""), ("list_total_s", ", list")):
                if key in s[impl]:
                    names.append(SHORT[impl] + suffix)
                    impls.append(impl)
                    series.append([pool / v for v in s[impl][key]])
        bars(ax, names, impls, series)
        ax.axvline(0.5, color="#1f77b4", linestyle=":", linewidth=1)
        ax.axvline(0.9, color="#6baed6", linestyle=":", linewidth=1)
        ax.set_title(
            f"map over {found['map']['sizes']['map']:,} ints: throughput vs Pool(2).map\n"
            "(whole processes: vs the Pool(2) script)"
        )
    if "cpu" in found:
        ax = next(panels)
        s = found["cpu"]["samples"]
        impls = list(s)
        bars(ax, [SHORT[i] for i in impls], impls, [s[i]["total_s"] for i in impls])
        sizes = found["cpu"]["sizes"]
        ax.set_title(f"{sizes['cpu_calls']} x sum_of_squares({sizes['cpu']:,}): seconds")
    if "latency" in found:
        ax = next(panels)
        s = found["latency"]["samples"]
        percentiles = ("p50_ms", "p95_ms", "p99_ms")
        shown = [i for i in ("ours", *PEERS) if i in s]
        width = 0.8 / len(shown)
        for offset, impl in enumerate(shown):
            xs = [k + offset * width for k in range(len(percentiles))]
            medians = [med(s[impl][k]) for k in percentiles]
            ax.bar(xs, medians, width, label=SHORT[impl], color=colors[impl])
            for x, v in zip(xs, medians, strict=True):
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
        middle = width * (len(shown) - 1) / 2
        ax.set_xticks([k + middle for k in range(len(percentiles))], ["p50", "p95", "p99"])
        ax.set_ylabel("ms")
        ax.legend()
        ax.set_title("round trip square.delay(7).get(), ms (lower is better)")
    if "down" in found:
        ax = next(panels)
        s = found["down"]["samples"]
        cap = found["down"]["sizes"]["down_cap_s"]
        keys = list(s)
        values: list[float] = []
        labels: list[str] = []
        impl_colors: list[str] = []
        for key in keys:
            f = s[key]
            hung = f["call_s"][0] is None
            values.append(cap if hung else med(f["call_s"]))
            what = f"hangs > {cap:g} s" if hung else f["outcome"][0].replace("error: ", "")
            labels.append(f"{down_label(key, f)}\n({what})")
            impl_colors.append(colors["stock" if f["impl"] == "stock" else "ours"])
        ax.barh(range(len(keys)), values, color=impl_colors)
        ax.set_xscale("log")
        ax.set_yticks(range(len(keys)), labels, fontsize=7)
        ax.invert_yaxis()
        for index, value in enumerate(values):
            ax.annotate(f" {value:.2f}", (value, index), va="center", fontsize=8)
        ax.set_title("broker down: seconds to a result or error (log)")
    if "start" in found:
        ax = next(panels)
        s = found["start"]["samples"]
        impls = list(s)
        bars(ax, [SHORT[i] for i in impls], impls, [s[i]["total_s"] for i in impls])
        ax.set_title("worker start to first result, s")
    for ax in panels:
        ax.axis("off")
    m = next(iter(found.values()))["machine"]
    fig.suptitle(
        f"taskpool vs stock Celery, Huey, Dramatiq, multiprocessing — {m['cpus']} CPUs, "
        f"Python {m['python']}, "
        f"Redis {m.get('redis', '?')}; bars: median of rounds, whiskers: min-max"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
