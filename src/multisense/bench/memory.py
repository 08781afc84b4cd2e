"""Peak memory of one pass. On CPU: the growth of the peak resident set size of a fresh child
process over the pass (the peak mark is reset first, so importing and building the model do not
count); on CUDA: torch.cuda.max_memory_allocated over the pass.

    python -m multisense.bench.memory '<case spec as JSON>'   # the child; prints one JSON line
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from .cases import ResamplerCase, resampler_steps


def rss_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Lower the peak-RSS mark to the current RSS (Linux >= 4.0), so that a peak reached while
    importing or building the model does not hide the case's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: peak-RSS growth (MiB) over one forward, then over one training step,
    both measured from the RSS before the forward (memory the allocator kept counts for the step)."""
    torch.set_num_threads(spec["threads"])
    case = ResamplerCase(**spec["case"])
    model, x = case.build("cpu"), case.inputs("cpu")
    forward, train_step = resampler_steps(model, x, "cpu", spec["bf16"])
    if reset_peak_rss():
        peak = lambda: rss_kib("VmHWM")  # noqa: E731
        base = rss_kib("VmRSS")
    else:  # no reset: getrusage's lifetime peak (KiB on Linux) can only show growth past earlier peaks
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
        base = peak()
    forward()
    fwd = peak()
    reset_peak_rss()
    train_step()
    step = peak()
    return {"fwd_mib": (fwd - base) / 1024, "step_mib": (step - base) / 1024}


def memory_of(case: ResamplerCase, device: str, bf16: bool, threads: int) -> tuple[float, float]:
    """Peak memory growth (MiB) of a forward pass and of a training step."""
    if device.startswith("cuda"):
        model, x = case.build(device), case.inputs(device)
        forward, train_step = resampler_steps(model, x, device, bf16)
        out = []
        for fn in (forward, train_step):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            out.append((torch.cuda.max_memory_allocated() - base) / 2 ** 20)
        return out[0], out[1]
    spec = {"case": dataclasses.asdict(case), "bf16": bf16, "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "multisense.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["fwd_mib"], res["step_mib"]


if __name__ == "__main__":
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))


def peak_allocated_mib(fn) -> float:
    """Peak growth of the bytes torch holds allocated while `fn()` runs, in MiB, in this process:
    the running sum of torch.profiler's allocation and free events (each op's own allocations, and
    the frees between ops), so memory the allocator had cached or freed before does not hide it,
    as it can hide an in-process RSS peak. Tensor memory only (no Python objects, no code)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for e in prof.events():
        change = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if change:
            deltas.append((e.time_range.start, change))
    live = top = 0
    for _, change in sorted(deltas):
        live += change
        top = max(top, live)
    return top / 2 ** 20
