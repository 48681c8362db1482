"""Tables, target checks and a speedup chart from AdaIN benchmark JSON files.

    python benchmarks/report.py DEFAULT.json THP.json [...] [--png adain.png] [--strict]

Each file is one ``pytest benchmarks/bench_adain.py --benchmark-json=...`` run, normally one per
allocator setting (``THP_MEM_ALLOC_ENABLE``). Ratios use medians: a 2-core machine has
heavy-tailed noise that drags means around. ``speedup vs X`` is X's time / this time.
``x floor`` is time / (bytes_moved / copy bandwidth): 1.0 would run at memory speed.
``iqr %`` (interquartile range / median) says how far to trust a row; ``compile s`` is the
first call of the compiled function, "cached" when Inductor loaded graphs from its disk cache.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

HEADLINE = {"op": "adain_from_style", "shape": [16, 512, 32, 32], "dtype": "float32"}
SPEEDUP_TARGETS = [("fwd", "compile", 1.25), ("fwd", "eager", 15.0),
                   ("fwd+bwd", "compile", 1.25), ("fwd+bwd", "eager", 6.0)]
FLOOR_TARGET = 1.5  # fastgen-cpu fwd, under THP_MEM_ALLOC_ENABLE=1: at most this x its bandwidth floor
THP_ON = "1"


@dataclass
class Run:
    path: str
    machine: dict
    allocator: str
    rows: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "default allocator" if self.allocator == "default" else f"THP_MEM_ALLOC_ENABLE={self.allocator}"

    def groups(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for row in self.rows:
            out.setdefault(row["group"], []).append(row)
        return out

    def find(self, **fields) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in fields.items())), None)


def load(path: str) -> Run:
    with open(path) as f:
        data = json.load(f)
    benchmarks, machine = data["benchmarks"], data.get("machine_info", {})
    allocator = machine.get("allocator") or next(
        (b["extra_info"].get("allocator") for b in benchmarks), "unknown")
    run = Run(path, machine, allocator)
    bandwidth = machine.get("copy_bandwidth_gbps")
    medians = {(b["group"], b["extra_info"]["provider"]): b["stats"]["median"] for b in benchmarks}
    for b in benchmarks:
        info, stats, median = b["extra_info"], b["stats"], b["stats"]["median"]
        gbps = info["bytes_moved"] / median / 1e9

        def speedup(other: str) -> float | None:
            theirs = medians.get((b["group"], other))
            return None if theirs is None else theirs / median

        compile_s = info.get("compile_s")
        run.rows.append({
            **info, "group": b["group"], "mean_ms": stats["mean"] * 1e3, "median_ms": median * 1e3,
            "iqr_pct": 100 * stats["iqr"] / median, "vs_eager": speedup("eager"), "vs_compile": speedup("compile"),
            "gbps": gbps, "pct_bw": None if bandwidth is None else 100 * gbps / bandwidth,
            "x_floor": None if bandwidth is None else bandwidth / gbps,
            "compile": None if compile_s is None
            else f"{compile_s:.1f}" + (" cached" if info.get("compile_cache_hits") else ""),
        })
    return run


COLUMNS = [  # header, row key, decimals (None: text)
    ("provider", "provider", None), ("mean ms", "mean_ms", 3), ("median ms", "median_ms", 3),
    ("iqr %", "iqr_pct", 0), ("vs eager", "vs_eager", 2), ("vs compile", "vs_compile", 2), ("GB/s", "gbps", 1),
    ("% copy bw", "pct_bw", 0), ("x floor", "x_floor", 2), ("compile s", "compile", None),
]


def fmt_row(values: list) -> str:
    cells = []
    for (header, _, decimals), value in zip(COLUMNS, values):
        width = max(len(header), 9 if decimals is not None else 13)
        if isinstance(value, float):
            cells.append(f"{value:>{width}.{decimals}f}")
        else:
            text = "-" if value is None else str(value)
            cells.append(text.ljust(width) if decimals is None else text.rjust(width))
    return "  " + " ".join(cells).rstrip()


def print_run(run: Run) -> None:
    bw, load = run.machine.get("copy_bandwidth_gbps"), run.machine.get("loadavg")
    print(f"\n== {run.path}: {run.label}"
          f"\n   copy bandwidth {'not recorded' if bw is None else f'{bw:.1f} GB/s'}, "
          f"torch threads {run.machine.get('torch_num_threads', '?')}, THP sysfs {run.machine.get('thp_sysfs', '?')}, "
          f"load average at end {'?' if load is None else ' '.join(f'{x:.1f}' for x in load)}")
    threads = run.machine.get("torch_num_threads")
    if load and threads and load[0] > 2 * threads:  # the run's own threads account for about `threads`
        print("   WARNING: other processes competed for the CPUs during this run; its timings are unreliable")
    for group, rows in run.groups().items():
        print(f"\n{group}\n" + fmt_row([header for header, _, _ in COLUMNS]))
        for row in rows:
            print(fmt_row([row.get(key) for _, key, _ in COLUMNS]))


def checks(runs: list[Run], provider: str = "fastgen-cpu") -> list[tuple[str, str, float | None]]:
    """(PASS/FAIL/MISSING, target, measured) per headline target; MISSING when ``provider`` has no data."""
    shape = "x".join(map(str, HEADLINE["shape"]))

    def fastgen(run: Run | None, pass_: str) -> dict:
        return (run and run.find(**HEADLINE, provider=provider, **{"pass": pass_})) or {}

    found = []  # (target, measured, met)
    for run in runs:
        for pass_, against, target in SPEEDUP_TARGETS:
            value = fastgen(run, pass_).get(f"vs_{against}")
            found.append((f"{pass_} {shape}: speedup vs {against} >= {target:g} [{run.label}]",
                          value, value is not None and value >= target))
    # The floor target is defined for huge pages only; with no such run it is reported MISSING.
    for run in [r for r in runs if r.allocator == THP_ON] or [None]:
        value = fastgen(run, "fwd").get("x_floor")
        found.append((f"fwd {shape}: time <= {FLOOR_TARGET:g} x bandwidth floor [THP_MEM_ALLOC_ENABLE=1]",
                       value, value is not None and value <= FLOOR_TARGET))
    return [("MISSING" if value is None else "PASS" if met else "FAIL", target, value)
            for target, value, met in found]


def plot(runs: list[Run], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    # Same slot and colour for a provider in every panel, even where it was skipped.
    providers = list(dict.fromkeys(r["provider"] for run in runs for r in run.rows))
    width = 0.8 / max(len(providers), 1)
    fig, axes = plt.subplots(len(runs), 1, figsize=(14, 4.5 * len(runs)), squeeze=False, sharey=True)
    for ax, run in zip(axes[:, 0], runs):
        groups = run.groups()
        for i, provider in enumerate(providers):
            speedups = [next((r["vs_eager"] for r in rows if r["provider"] == provider), None)
                        for rows in groups.values()]
            ax.bar([g + (i - (len(providers) - 1) / 2) * width for g in range(len(groups))],
                   [math.nan if s is None else s for s in speedups], width, label=provider, color=f"C{i}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup vs eager (median)")
        ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{run.label} ({run.path})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files, one per allocator setting")
    parser.add_argument("--png", help="write a bar chart of speedup vs eager here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a check is not PASS")
    args = parser.parse_args()

    runs = [load(path) for path in args.results]
    print("allocator settings in force: " + ", ".join(f"{run.label} ({run.path})" for run in runs))
    for run in runs:
        print_run(run)
    # The targets are fastgen-cpu's; the same checks without the output cache show what it is worth.
    for provider in ("fastgen-cpu", "fastgen-cpu-nocache"):
        print(f"\nchecks ({provider}, {HEADLINE['op']} {HEADLINE['dtype']}):")
        for status, target, value in checks(runs, provider):
            print(f"  {status:<7}  {target}: {'no data' if value is None else f'{value:.2f}'}")
    results = checks(runs)
    if args.png:
        plot(runs, args.png)
        print(f"\nchart: {args.png}")
    return 1 if args.strict and any(status != "PASS" for status, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
