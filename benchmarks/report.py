"""Tables, target checks and a speedup chart from fastgen's benchmark JSON files.

    python benchmarks/report.py RESULT.json [...] [--png bench.png] [--strict]

Each file is one ``pytest benchmarks/bench_<suite>.py --benchmark-json=...`` run, normally one per
suite and allocator setting (``THP_MEM_ALLOC_ENABLE``); a file may also hold several suites.
Rows are sorted into suites by their op (``SUITES``). Ratios use medians: a 2-core machine has
heavy-tailed noise that drags means around. ``vs X`` is provider X's time / this time.
``x floor`` is time / (bytes_moved / copy bandwidth): 1.0 would run at memory speed; the
bandwidth columns show only where the benchmark set ``bytes_moved``. ``iqr %`` (interquartile
range / median) says how far to trust a row; ``compile s`` is the first call of the compiled
function, "cached" when Inductor loaded graphs from its disk cache.

VQ, ``vq_nearest``: ``vs best torch`` divides the fastest of the torch providers (cdist, addmm,
compile) by this row; ``GFLOP/s`` counts 2 N K D and ``% sgemm`` compares it with the float32
matrix-multiply rate measured in the same run; ``peak MiB`` is how far one call raised the peak
resident memory, and ``% NxK`` that as a share of the N x K float32 distance matrix.

FID: ``rel diff`` is |distance - scipy's| / scipy's (``frechet_distance``), ``rel err`` the
Frobenius relative error of the covariance against float64 np.cov (``feature_stats``).

A row whose extra_info has ``timed_s`` uses it instead of the measured time (NeRF's training to a
PSNR: the training seconds, without the held-out checks that pytest-benchmark's clock includes).

Spectral norm, ``sngan_d_step``: ``SN ovh ms`` is the spectral-norm overhead, time(with SN) -
time(without SN), taken as the median over rounds of (this round - the no-SN step timed just
before it) when the benchmark recorded those (``baseline_s``); ``ovh (medians)`` is the plain
difference of medians, for comparison; ``ovh / torch`` divides by torch's overhead (none when
torch's is not positive: then noise swamped it).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field

THP_ON = "1"


@dataclass(frozen=True)
class Check:
    """A target on one row's value: ``where`` (plus the checked provider) picks the row in each run."""
    text: str  # "{target}" is filled in
    where: dict
    metric: str
    cmp: str  # ">=" or "<="
    target: float
    thp_only: bool = False  # defined for THP_MEM_ALLOC_ENABLE=1 runs only; MISSING without one

    def met(self, value: float) -> bool:
        return value >= self.target if self.cmp == ">=" else value <= self.target


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # what the checks are about, for their header
    ops: tuple[str, ...]
    baselines: tuple[str, ...]  # providers of the "vs X" columns; the chart plots speedup vs the first
    check_providers: tuple[str, ...]  # the checks run for each; --strict judges the first
    checks: tuple[Check, ...]
    paired_baseline: str | None = None  # groups with this provider get the overhead columns
    best_of: tuple[str, ...] = ()  # providers of the "vs best torch" column: the fastest of them


ADAIN_HEADLINE = {"op": "adain_from_style", "shape": [16, 512, 32, 32], "dtype": "float32"}
SN_STEP = {"op": "spectral_norm_step", "dtype": "float32"}
VQ_SIZES = [(n, k) for n in (16384, 65536) for k in (512, 1024, 8192)]
NERF_RENDER = {"op": "volume_render", "shape": [65536, 192, 3]}

SUITES = (
    Suite("adain", "adain_from_style float32", ("adain_from_style", "adain"), ("eager", "compile"),
          ("fastgen-cpu", "fastgen-cpu-nocache"), (
              *(Check(f"{pass_} 16x512x32x32: speedup vs {against} >= {{target}}", {**ADAIN_HEADLINE, "pass": pass_},
                      f"vs_{against}", ">=", target)
                for pass_, against, target in [("fwd", "compile", 1.25), ("fwd", "eager", 15.0),
                                               ("fwd+bwd", "compile", 1.25), ("fwd+bwd", "eager", 6.0)]),
              Check("fwd 16x512x32x32: time <= {target} x bandwidth floor", {**ADAIN_HEADLINE, "pass": "fwd"},
                    "x_floor", "<=", 1.5, thp_only=True),
          )),
    Suite("spectral_norm", "spectral norm float32, train mode, 1 power iteration",
          ("spectral_norm_step", "sn_layer_forward", "sngan_d_step"), ("torch", "compile"), ("fastgen",), (
              Check("step 512x4608: speedup vs torch's parametrization >= {target}",
                    {**SN_STEP, "shape": [512, 4608]}, "vs_torch", ">=", 2.0),
              Check("step 64x1024: speedup vs torch's parametrization >= {target}",
                    {**SN_STEP, "shape": [64, 1024]}, "vs_torch", ">=", 1.5),
              *(Check(f"{layer} forward (train mode): speedup vs torch's spectral norm >= {{target}}",
                      {"op": "sn_layer_forward", "layer": layer}, "vs_torch", ">=", 1.0)
                for layer in ("conv2d", "conv_transpose2d", "linear", "embedding")),
              Check("SN-GAN D step 64x3x32x32: SN overhead <= {target} x torch's SN overhead",
                    {"op": "sngan_d_step"}, "ovh_vs_torch", "<=", 0.5),
          ), paired_baseline="none"),
    Suite("vq", "vq_nearest float32, D=64", ("vq_nearest",), ("addmm", "faiss"), ("fastgen",), (
        *(Check(f"N={n} K={k}: speedup vs faiss >= {{target}}", {"op": "vq_nearest", "shape": [n, k, 64]},
                "vs_faiss", ">=", 1.0) for n, k in VQ_SIZES),
        *(Check(f"N={n} K={k}: speedup vs the best torch variant >= {{target}}",
                {"op": "vq_nearest", "shape": [n, k, 64]}, "vs_best_torch", ">=", 3.0) for n, k in VQ_SIZES),
        *(Check(f"N={n} K=8192: peak extra memory <= {{target}} % of the N x K float32 matrix",
                {"op": "vq_nearest", "shape": [n, 8192, 64]}, "pct_nxk", "<=", 1.0) for n in (16384, 65536)),
    ), best_of=("cdist", "addmm", "compile")),
    Suite("fid", "FID: Frechet distance d=2048 float64, statistics 50000x2048 float32",
          ("frechet_distance", "feature_stats"), ("scipy", "eigvals", "eigh", "numpy", "torch"), ("fastgen",), (
              Check("frechet_distance: speedup vs scipy's sqrtm formula >= {target}", {"op": "frechet_distance"},
                    "vs_scipy", ">=", 15.0),
              Check("frechet_distance: speedup vs the eigvals formula >= {target}", {"op": "frechet_distance"},
                    "vs_eigvals", ">=", 5.0),
              Check("frechet_distance: relative difference from scipy's value <= {target}",
                    {"op": "frechet_distance"}, "rel_diff", "<=", 1e-9),
              Check("feature_stats: speedup vs np.cov >= {target}", {"op": "feature_stats"}, "vs_numpy", ">=", 2.0),
              Check("feature_stats: relative error vs float64 <= {target}", {"op": "feature_stats"},
                    "rel_err", "<=", 1e-6),
          )),
    Suite("gram", "gram_matrix float32, features [B, C, N]", ("gram_matrix",), ("bmm", "compile"), ("fastgen",), (
        *(Check(f"{pass_} 8x256x4096: speedup vs bmm >= {{target}}",
                {"op": "gram_matrix", "shape": [8, 256, 4096], "dtype": "float32", "pass": pass_}, "vs_bmm", ">=", 1.6)
          for pass_ in ("fwd", "fwd+bwd")),
    )),
    # No targets: what the kernels buy end to end, next to FASTGEN_BACKEND=ref.
    Suite("models", "one training step, batch 64", ("train_step",), ("ref",), ("fastgen",), ()),
    Suite("nerf", "NeRF float32: volume rendering, sample_pdf, training to a held-out PSNR",
          ("volume_render", "sample_pdf", "nerf_train_to_psnr"), ("eager", "compile", "dense"), ("fastgen",), (
              Check("volume_render fwd R=65536 S=192: speedup vs eager >= {target}",
                    {**NERF_RENDER, "pass": "fwd"}, "vs_eager", ">=", 12.0),
              Check("volume_render fwd+bwd R=65536 S=192: speedup vs torch.compile >= {target}",
                    {**NERF_RENDER, "pass": "fwd+bwd"}, "vs_compile", ">=", 10.0),
              *(Check(f"sample_pdf R=65536 n=128 {kind}: speedup vs eager >= {{target}}",
                      {"op": "sample_pdf", "deterministic": kind == "det"}, "vs_eager", ">=", 10.0)
                for kind in ("det", "rand")),
              Check("training to the held-out PSNR: speedup of the accelerated pipeline vs dense >= {target}",
                    {"op": "nerf_train_to_psnr"}, "vs_dense", ">=", 5.0),
          )),
)


def suite_of(op: str) -> Suite | None:
    return next((s for s in SUITES if op in s.ops), None)


@dataclass
class Run:
    path: str
    machine: dict
    allocator: str
    rows: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "default allocator" if self.allocator == "default" else f"THP_MEM_ALLOC_ENABLE={self.allocator}"

    def suite_rows(self, suite: Suite) -> list[dict]:
        return [r for r in self.rows if r["suite"] == suite.name]

    def groups(self, suite: Suite) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for row in self.suite_rows(suite):
            out.setdefault(row["group"], []).append(row)
        return out

    def find(self, **fields) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in fields.items())), None)


def paired_overhead_ms(bench: dict) -> float | None:
    """Median over rounds of (this round's time - the baseline step timed just before it), in ms."""
    data, baseline = bench["stats"].get("data"), bench["extra_info"].get("baseline_s")
    if not data or not baseline or len(data) != len(baseline):
        return None
    return 1e3 * statistics.median(t - b for t, b in zip(data, baseline))


def _has_time(path: str, bench: dict) -> bool:
    if "timed_s" in bench["extra_info"] and bench["extra_info"]["timed_s"] is None:
        print(f"{path}: {bench['name']}: no time recorded (timed_s is null); left out", file=sys.stderr)
        return False
    return True


def _seconds(bench: dict) -> tuple[float, float]:
    """(mean, median) in seconds: extra_info's ``timed_s`` for both when the benchmark set it."""
    timed = bench["extra_info"].get("timed_s")
    return (timed, timed) if timed is not None else (bench["stats"]["mean"], bench["stats"]["median"])


def load(path: str) -> Run:
    with open(path) as f:
        data = json.load(f)
    benchmarks, machine = data["benchmarks"], data.get("machine_info", {})
    allocator = machine.get("allocator") or next(
        (b["extra_info"].get("allocator") for b in benchmarks), "unknown")
    run = Run(path, machine, allocator)
    bandwidth = machine.get("copy_bandwidth_gbps")
    benchmarks = [b for b in benchmarks if _has_time(path, b)]
    medians = {(b["group"], b["extra_info"]["provider"]): _seconds(b)[1] for b in benchmarks}
    for b in benchmarks:
        info, stats = b["extra_info"], b["stats"]
        mean, median = _seconds(b)
        suite = suite_of(info.get("op"))
        if suite is None:
            print(f"{path}: {b['name']}: op {info.get('op')!r} is in no suite of report.py; left out", file=sys.stderr)
            continue
        row = {**info, "suite": suite.name, "group": b["group"], "mean_ms": mean * 1e3,
               "median_ms": median * 1e3, "iqr_pct": 100 * stats["iqr"] / median}
        for other in suite.baselines:
            theirs = medians.get((b["group"], other))
            row[f"vs_{other}"] = None if theirs is None else theirs / median
        if suite.best_of:
            theirs = [medians[(b["group"], p)] for p in suite.best_of if (b["group"], p) in medians]
            row["vs_best_torch"] = min(theirs) / median if theirs else None
        if (flops := info.get("flops")) is not None:
            row["gflops"] = flops / median / 1e9
            if (sgemm := machine.get("sgemm_gflops")) is not None:
                row["pct_sgemm"] = 100 * row["gflops"] / sgemm
        if (peak := info.get("peak_extra_bytes")) is not None:
            row["peak_mib"] = peak / 2**20
            row["pct_nxk"] = 100 * peak / info["nxk_float32_bytes"]
        if info.get("bytes_moved") is not None:
            gbps = info["bytes_moved"] / median / 1e9
            row.update(gbps=gbps, pct_bw=None if bandwidth is None else 100 * gbps / bandwidth,
                       x_floor=None if bandwidth is None else bandwidth / gbps)
        if (compile_s := info.get("compile_s")) is not None:
            row["compile"] = f"{compile_s:.1f}" + (" cached" if info.get("compile_cache_hits") else "")
        if suite.paired_baseline and info["provider"] != suite.paired_baseline \
                and (base := medians.get((b["group"], suite.paired_baseline))) is not None:
            row["ovh_unpaired_ms"] = (median - base) * 1e3
            paired = paired_overhead_ms(b)
            row["ovh_ms"] = row["ovh_unpaired_ms"] if paired is None else paired
        run.rows.append(row)
    # Each implementation's overhead relative to the first baseline's (torch's), in the same group.
    for row in run.rows:
        suite = suite_of(row["op"])
        ref = run.find(group=row["group"], provider=suite.baselines[0])
        if row.get("ovh_ms") is not None and ref is not None and (ref.get("ovh_ms") or 0) > 0:
            row[f"ovh_vs_{suite.baselines[0]}"] = row["ovh_ms"] / ref["ovh_ms"]
    return run


def columns(suite: Suite) -> list[tuple[str, str, int | str | None]]:
    """header, row key, decimals or a format spec (None: text); a table shows only the columns its rows have."""
    return [
        ("provider", "provider", None), ("mean ms", "mean_ms", 3), ("median ms", "median_ms", 3),
        ("iqr %", "iqr_pct", 0), *((f"vs {b}", f"vs_{b}", 2) for b in suite.baselines),
        ("vs best torch", "vs_best_torch", 2), ("GFLOP/s", "gflops", 1), ("% sgemm", "pct_sgemm", 0),
        ("peak MiB", "peak_mib", 1), ("% NxK", "pct_nxk", 2),
        ("GB/s", "gbps", 1), ("% copy bw", "pct_bw", 0), ("x floor", "x_floor", 2), ("compile s", "compile", None),
        ("rel diff", "rel_diff", ".1e"), ("rel err", "rel_err", ".1e"), ("SN ovh ms", "ovh_ms", 2), ("ovh (medians)", "ovh_unpaired_ms", 2),
        (f"ovh / {suite.baselines[0]}", f"ovh_vs_{suite.baselines[0]}", 2),
    ]


def fmt_row(cols: list, values: list) -> str:
    cells = []
    for (header, _, decimals), value in zip(cols, values):
        width = max(len(header), 9 if decimals is not None else 13)
        if isinstance(value, float):
            spec = decimals if isinstance(decimals, str) else f".{decimals}f"
            cells.append(f"{value:>{width}{spec}}")
        else:
            text = "-" if value is None else str(value)
            cells.append(text.ljust(width) if decimals is None else text.rjust(width))
    return "  " + " ".join(cells).rstrip()


def print_run(run: Run) -> None:
    bw, load = run.machine.get("copy_bandwidth_gbps"), run.machine.get("loadavg")
    sgemm = run.machine.get("sgemm_gflops")
    print(f"\n== {run.path}: {run.label}"
          f"\n   copy bandwidth {'not recorded' if bw is None else f'{bw:.1f} GB/s'}, "
          f"sgemm {'not recorded' if sgemm is None else f'{sgemm:.0f} GFLOP/s'}, "
          f"torch threads {run.machine.get('torch_num_threads', '?')}, THP sysfs {run.machine.get('thp_sysfs', '?')}, "
          f"load average at end {'?' if load is None else ' '.join(f'{x:.1f}' for x in load)}")
    threads = run.machine.get("torch_num_threads")
    if load and threads and load[0] > 2 * threads:  # the run's own threads account for about `threads`
        print("   WARNING: other processes competed for the CPUs during this run; its timings are unreliable")
    for suite in SUITES:
        cols = columns(suite)
        for group, rows in run.groups(suite).items():
            shown = [c for c in cols if c[1] == "provider" or any(r.get(c[1]) is not None for r in rows)]
            print(f"\n{group}\n" + fmt_row(shown, [header for header, _, _ in shown]))
            for row in rows:
                print(fmt_row(shown, [row.get(key) for _, key, _ in shown]))


def checks(suite: Suite, runs: list[Run], provider: str) -> list[tuple[str, str, float | None]]:
    """(PASS/FAIL/MISSING, target, measured) per check and run; MISSING when ``provider`` has no data."""
    runs = [run for run in runs if run.suite_rows(suite)]
    # Per run, every check; a THP-only check with no such run is reported MISSING rather than left out.
    pairs = [(run, check) for run in runs for check in suite.checks if not check.thp_only]
    pairs += [(run, check) for check in suite.checks if check.thp_only
              for run in [r for r in runs if r.allocator == THP_ON] or [None]]
    found = []
    for run, check in pairs:
        row = (run and run.find(**check.where, provider=provider)) or {}
        value = row.get(check.metric)
        status = "MISSING" if value is None else "PASS" if check.met(value) else "FAIL"
        label = run.label if run else f"THP_MEM_ALLOC_ENABLE={THP_ON}"
        found.append((status, f"{check.text.format(target=f'{check.target:g}')} [{label}]", value))
    return found


def plot(runs: list[Run], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    panels = [(run, suite) for run in runs for suite in SUITES if run.suite_rows(suite)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 4.5 * len(panels)), squeeze=False)
    for ax, (run, suite) in zip(axes[:, 0], panels):
        # Same slot and colour for a provider in every panel of a suite, even where it was skipped.
        providers = list(dict.fromkeys(r["provider"] for other in runs for r in other.suite_rows(suite)))
        width, groups = 0.8 / max(len(providers), 1), run.groups(suite)
        # Each group against the first of the suite's baselines that it has.
        bases = {group: next((b for b in suite.baselines if any(r["provider"] == b for r in rows)), None)
                 for group, rows in groups.items()}
        for i, provider in enumerate(providers):
            speedups = [next((r.get(f"vs_{bases[group]}") for r in rows if r["provider"] == provider), None)
                        for group, rows in groups.items()]
            ax.bar([g + (i - (len(providers) - 1) / 2) * width for g in range(len(groups))],
                   [math.nan if s is None else s for s in speedups], width, label=provider, color=f"C{i}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup vs the group's baseline (median)")
        ax.set_xticks(range(len(groups)), [f"{group}\nvs {bases[group]}" for group in groups],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{suite.name}: {run.label} ({run.path})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files, e.g. one per suite and allocator")
    parser.add_argument("--png", help="write bar charts of speedup vs each suite's first baseline here")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a check of a suite's first checked provider is not PASS")
    args = parser.parse_args()

    runs = [load(path) for path in args.results]
    print("allocator settings in force: " + ", ".join(f"{run.label} ({run.path})" for run in runs))
    for run in runs:
        print_run(run)
    strict_failures = 0
    for suite in [s for s in SUITES if any(run.suite_rows(s) for run in runs)]:
        # The targets are the first provider's; the same checks for the others show e.g. what a cache is worth.
        for provider in suite.check_providers:
            print(f"\nchecks ({provider}, {suite.title}):")
            results = checks(suite, runs, provider)
            for status, target, value in results:
                print(f"  {status:<7}  {target}: {'no data' if value is None else f'{value:.3g}'}")
            if provider == suite.check_providers[0]:
                strict_failures += sum(status != "PASS" for status, _, _ in results)
    if args.png:
        plot(runs, args.png)
        print(f"\nchart: {args.png}")
    return 1 if args.strict and strict_failures else 0


if __name__ == "__main__":
    sys.exit(main())
