"""Benchmark-session hooks: store the allocator setting, this machine's copy bandwidth and sgemm rate.

They land in the JSON's ``machine_info``, so ``report.py`` can judge every result against the
memory bandwidth and matrix-multiply throughput measured in the same run, under the same allocator.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache  # pytest-benchmark asks for machine_info once to save and again to compare
def copy_bandwidth_gbps(nbytes: int = 256 << 20, repeats: int = 10) -> float:
    """Best ``Tensor.copy_`` throughput over ``repeats`` copies, counting bytes read + written, in GB/s."""
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)  # written once so that page faults stay out of the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


@functools.cache
def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 ``torch.mm`` rate on square ``size`` matrices over ``repeats`` products, in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # library initialization out of the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["allocator"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "default")
    # THP_MEM_ALLOC_ENABLE=1 only madvises; the kernel honours it unless THP is "never".
    machine_info["thp_sysfs"] = THP_SYSFS.read_text().strip() if THP_SYSFS.exists() else None
    machine_info["torch_num_threads"] = torch.get_num_threads()
    # Other work on a small machine skews everything; a load average well above the thread count says so.
    machine_info["loadavg"] = os.getloadavg()
    machine_info["copy_bandwidth_gbps"] = copy_bandwidth_gbps()
    machine_info["sgemm_gflops"] = sgemm_gflops()
