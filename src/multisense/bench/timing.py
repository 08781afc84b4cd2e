"""Wall-clock timing that survives noisy machines: medians, and ratios taken round-robin.

Absolute times drift by 15% and more from minute to minute on shared machines, so every rate
a benchmark reports is also quoted as a ratio to a reference matmul timed in the same rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device: str, *, min_time: float, min_runs: int = 3, max_runs: int = 50,
           warmup: int = 2) -> float:
    """Median wall time of `fn` in seconds: `warmup` calls, then runs until both min_runs and min_time."""
    return statistics.median(rounds({"fn": fn}, device, min_time=min_time, min_rounds=min_runs,
                                    max_rounds=max_runs, warmup=warmup)["fn"])


def rounds(fns: dict[str, Callable[[], object]], device: str, *, min_time: float, min_rounds: int = 3,
           max_rounds: int = 30, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times (s) of several functions run round-robin, so that the ratios between them are taken
    seconds apart: a neighbour's job or a clock change then moves both sides of a ratio together."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    n = 0
    while n < max_rounds and (n < min_rounds or time.perf_counter() - start < min_time * len(fns)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
        n += 1
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i]."""
    return statistics.median(a / b for a, b in zip(num, den))


def matmul_fn(n: int, dtype: torch.dtype, device: str) -> Callable[[], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    return lambda: a @ b


def matmul_gflops(n: int, dtype: torch.dtype, device: str, min_time: float) -> float:
    t = timeit(matmul_fn(n, dtype, device), device, min_time=min_time, min_runs=5)
    return 2 * n ** 3 / t / 1e9
