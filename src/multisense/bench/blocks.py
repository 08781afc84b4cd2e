"""`multisense bench`: throughput and memory of the building blocks, as printed figures.

What it measures, in this order, in one process (plus one child process per memory figure):
  1. a large fp32 matmul (and a bf16 one): this run's reference FLOP rate. Absolute times
     drift by 15% and more from minute to minute on shared machines, so every rate below
     is also quoted as a ratio to the matmul, timed round-robin with each case (`rounds`);
  2. the Perceiver Resampler, forward and forward+backward, at a few sizes;
  3. the same under bf16 autocast: speed-up over fp32 and relative error of the output;
  4. the gated cross-attention block: `immediate` (gathers one media item per token)
     against the dense masked path (`window:1` forced through it: the same maths; and
     `all_previous`) as
     the number of media items grows, with media K/V cached and with the K/V projection.

FLOPs: every matmul counts 2 per multiply-add; a backward pass counts as 2 forwards (the
usual convention), so forward+backward = 3 x forward. Peak memory on CPU is the growth of the
peak resident set size of a fresh child process over one pass (the peak mark is reset first,
see `_memory_child`); on CUDA it is torch.cuda.max_memory_allocated over the pass.
docs/benchmarks.md explains every column.

    python -m multisense.bench.blocks                    # full run, writes docs/benchmarks.md
    python -m multisense.bench.blocks --quick --out ''   # tiny sizes, seconds, no file
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from ..nn import GatedCrossAttentionBlock, MediaRouting, PerceiverResampler, media_index, media_visibility

DEFAULT_OUT = "docs/benchmarks.md"


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class ResamplerCase:
    name: str
    dim: int
    depth: int
    num_latents: int
    heads: int
    dim_head: int
    ff_mult: int
    batch: int  # B
    media: int  # M
    frames: int  # F
    tokens: int  # S

    @property
    def label(self) -> str:
        return (f"{self.name}: D{self.dim} x{self.depth} R{self.num_latents} H{self.heads}x{self.dim_head}, "
                f"B{self.batch} M{self.media} {self.frames}x{self.tokens}")

    def build(self, device: str) -> PerceiverResampler:
        torch.manual_seed(0)
        return PerceiverResampler(dim=self.dim, depth=self.depth, num_latents=self.num_latents, heads=self.heads,
                                  dim_head=self.dim_head, ff_mult=self.ff_mult).to(device)

    def inputs(self, device: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return torch.randn(self.batch, self.media, self.frames, self.tokens, self.dim, generator=g).to(device)

    @property
    def media_tokens(self) -> int:
        return self.batch * self.media * self.frames * self.tokens

    def forward_flops(self) -> int:
        """Matmul FLOPs of one forward pass (2 per multiply-add), as the published layer computes them."""
        D, R, inner, N = self.dim, self.num_latents, self.heads * self.dim_head, self.frames * self.tokens
        per_layer = (2 * R * D * inner  # q
                     + 2 * (N + R) * D * 2 * inner  # k, v of [media ; latents]
                     + 2 * 2 * R * (N + R) * inner  # q k^T and p v
                     + 2 * R * inner * D  # out
                     + 2 * 2 * R * D * self.ff_mult * D)  # feed-forward
        return self.batch * self.media * self.depth * per_layer

    def skipped_backward_flops(self) -> int:
        """Backward FLOPs the implementation does not execute: the media tokens need no gradient
        (frozen encoder), so the [N, 2I] x [2I, D] input gradient of each layer's K/V projection is skipped."""
        inner, N = self.heads * self.dim_head, self.frames * self.tokens
        return self.batch * self.media * self.depth * 2 * N * 2 * inner * self.dim


@dataclasses.dataclass(frozen=True)
class XAttnCase:
    batch: int
    length: int  # L
    dim: int  # D (= Dm)
    latents: int  # R
    heads: int
    dim_head: int
    ff_mult: int
    media_counts: tuple[int, ...]


def full_cases() -> tuple[list[ResamplerCase], list[str], XAttnCase, int]:
    """(resampler cases, names of those also run under bf16, xattn case, matmul size)."""
    big = dict(dim=1024, depth=6, num_latents=64, heads=8, ff_mult=4, media=1, frames=8, tokens=256)
    cases = [
        ResamplerCase("target", dim_head=128, batch=1, **big),
        ResamplerCase("target-b2", dim_head=128, batch=2, **big),
        ResamplerCase("published", dim_head=64, batch=1, **big),
        ResamplerCase("image", dim=512, depth=2, num_latents=32, heads=8, dim_head=64, ff_mult=4,
                      batch=8, media=1, frames=1, tokens=256),
    ]
    xattn = XAttnCase(batch=1, length=512, dim=1024, latents=64, heads=8, dim_head=128, ff_mult=4,
                      media_counts=(1, 8, 32))
    return cases, ["target", "target-b2", "published"], xattn, 2048


def quick_cases() -> tuple[list[ResamplerCase], list[str], XAttnCase, int]:
    small = dict(dim=64, depth=2, num_latents=8, heads=2, ff_mult=2, media=1, frames=2, tokens=16)
    cases = [ResamplerCase("target", dim_head=32, batch=1, **small),
             ResamplerCase("published", dim_head=16, batch=2, **small)]
    xattn = XAttnCase(batch=1, length=64, dim=64, latents=8, heads=2, dim_head=32, ff_mult=2, media_counts=(1, 4, 8))
    return cases, ["target"], xattn, 256


# ----------------------------------------------------------------------------- timing


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


def autocast_ctx(device: str, bf16: bool):
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()


DENSE_WINDOW_1 = "window:1-dense"


def xattn_routing(idx: torch.Tensor, num_media: int, num_latents: int, mode: str) -> MediaRouting:
    """MediaRouting.build, except DENSE_WINDOW_1: `window:1` through the dense masked path.
    (MediaRouting.build sends window:1 to the gather path, since it is the same maths as immediate.)"""
    if mode != DENSE_WINDOW_1:
        return MediaRouting.build(idx, num_media=num_media, num_latents=num_latents, mode=mode)
    allowed = media_visibility(idx, num_media, "window:1")  # [B, L, M]
    mask = allowed.repeat_interleave(num_latents, dim=-1).unsqueeze(1)  # [B, 1, L, M*R]
    return MediaRouting(mode="window:1", sees_media=idx > 0, mask=mask)


def resampler_steps(model: PerceiverResampler, x: torch.Tensor, device: str, bf16: bool):
    """(forward, forward+backward) closures. The forward is inference (no_grad). The training step
    allocates its gradients afresh, as a step after optimizer.zero_grad() does, and frees them at
    its end (inside the timing, as the next zero_grad would), so that passes timed after it start
    from the same memory state as without it."""

    def forward():
        with torch.no_grad(), autocast_ctx(device, bf16):
            return model(x)

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast_ctx(device, bf16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return forward, train_step


# ----------------------------------------------------------------------------- memory


def _rss_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Lower the peak-RSS mark to the current RSS (Linux >= 4.0), so that a peak reached while
    importing or building the model does not hide the case's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_child(spec: dict) -> dict:
    """Runs in a fresh process: peak-RSS growth (MiB) over one forward, then over one training step,
    both measured from the RSS before the forward (memory the allocator kept counts for the step)."""
    torch.set_num_threads(spec["threads"])
    case = ResamplerCase(**spec["case"])
    model, x = case.build("cpu"), case.inputs("cpu")
    forward, train_step = resampler_steps(model, x, "cpu", spec["bf16"])
    if _reset_peak_rss():
        peak = lambda: _rss_kib("VmHWM")  # noqa: E731
        base = _rss_kib("VmRSS")
    else:  # no reset: getrusage's lifetime peak (KiB on Linux) can only show growth past earlier peaks
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
        base = peak()
    forward()
    fwd = peak()
    _reset_peak_rss()
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
    proc = subprocess.run([sys.executable, "-m", "multisense.bench.blocks", "--memory-child", json.dumps(spec)],
                          capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["fwd_mib"], res["step_mib"]


# ----------------------------------------------------------------------------- tables


class Table:
    def __init__(self, title: str, headers: list[str], note: str = ""):
        self.title, self.headers, self.note, self.rows = title, headers, note, []

    def add(self, *cells) -> None:
        self.rows.append([fmt(c) for c in cells])

    def text(self) -> str:
        cols = list(zip(self.headers, *self.rows))
        widths = [max(len(c) for c in col) for col in cols]
        line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:  # NaN: not measured
            return "-"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.2f}"
        return f"{v:.1e}"
    return str(v)


# ----------------------------------------------------------------------------- machine


def machine(device: str) -> dict[str, str]:
    info = {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["torch"] = torch.__version__
    info["threads"] = str(torch.get_num_threads())
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace, command: str) -> tuple[str, str]:
    """Runs every section; returns (text report, markdown section)."""
    device = args.device
    cases, bf16_names, xcase, mm_n = quick_cases() if args.quick else full_cases()
    if args.batch:  # e.g. a GPU, where batch 1 measures kernel launches rather than the blocks
        cases = [dataclasses.replace(c, batch=args.batch) for c in cases]
        cases = [c for i, c in enumerate(cases)  # drop cases that became duplicates
                 if all(dataclasses.replace(c, name="") != dataclasses.replace(d, name="") for d in cases[:i])]
        xcase = dataclasses.replace(xcase, batch=args.batch)
    mm_n = args.matmul_size or mm_n
    min_time = 0.02 if args.quick else args.min_time
    min_rounds = 3 if args.quick else args.rounds
    info = machine(device)
    load_start = loadavg()
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tables: list[Table] = []
    say = (lambda *a: None) if args.silent else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # 1. reference matmul rates
    say(f"matmul {mm_n}^3 ...")
    mm32 = matmul_gflops(mm_n, torch.float32, device, min_time)
    mm16 = matmul_gflops(mm_n, torch.bfloat16, device, min_time)
    ref = Table("Reference matmul", ["matmul", "GFLOP/s", "vs fp32"])
    ref.add(f"fp32 {mm_n}x{mm_n}x{mm_n}", mm32, 1.0)
    ref.add(f"bf16 {mm_n}x{mm_n}x{mm_n}", mm16, mm16 / mm32)
    tables.append(ref)

    # 2. and 3. resampler: fp32, and bf16 autocast for some cases. Each case runs its passes
    # round-robin with the reference matmuls, and every ratio is the median of per-round ratios.
    mm_flops = 2 * mm_n ** 3
    mm32_fn, mm16_fn = matmul_fn(mm_n, torch.float32, device), matmul_fn(mm_n, torch.bfloat16, device)
    rs = Table("Perceiver Resampler, fp32",
               ["case", "pass", "ms", "media tok/s", "GFLOP/s", "% fp32 mm", "exec % mm", "peak MiB"],
               note="GFLOP/s counts model FLOPs (backward = 2 x forward); '% fp32 mm' divides it by the fp32 "
                    "matmul timed in the same rounds. 'exec % mm' counts only the FLOPs actually executed: the "
                    "backward skips the media tokens' input gradient (they need none). fwd runs under no_grad.")
    bf = Table("Perceiver Resampler, bf16 autocast",
               ["case", "pass", "fp32 ms", "bf16 ms", "speed-up", "rel. error", "GFLOP/s", "% bf16 mm", "peak MiB"],
               note="speed-up: median over rounds of fp32 time / bf16 time. rel. error = ||out_bf16 - out_fp32|| "
                    "/ ||out_fp32|| of the resampler's output. '% bf16 mm' is against the bf16 matmul.")
    summary: dict[str, dict[str, float]] = {}
    nan = float("nan")
    for case in cases:
        with_bf16 = case.name in bf16_names
        say(f"resampler {case.label}{' (+ bf16)' if with_bf16 else ''} ...")
        model, x = case.build(device), case.inputs(device)
        fns = {"mm32": mm32_fn}
        fns["fwd"], fns["step"] = resampler_steps(model, x, device, bf16=False)
        if with_bf16:
            fns["mm16"] = mm16_fn
            fns["fwd16"], fns["step16"] = resampler_steps(model, x, device, bf16=True)
        t = rounds(fns, device, min_time=min_time, min_rounds=min_rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        flops = case.forward_flops()
        executed = 3 * flops - case.skipped_backward_flops()
        mem = memory_of(case, device, False, torch.get_num_threads()) if args.memory else (nan, nan)
        res = summary.setdefault(case.name, {})
        for label, key, fl, ex, m in (("fwd", "fwd", flops, flops, mem[0]),
                                      ("fwd+bwd", "step", 3 * flops, executed, mem[1])):
            ratio = fl / mm_flops * median_ratio(t["mm32"], t[key])
            res[key] = ratio
            rs.add(case.label, label, med[key] * 1e3, case.media_tokens / med[key], fl / med[key] / 1e9,
                   100 * ratio, 100 * ex / mm_flops * median_ratio(t["mm32"], t[key]), m)
        if with_bf16:
            ref_out = fns["fwd"]().float()
            err = ((fns["fwd16"]().float() - ref_out).norm() / ref_out.norm()).item()
            res["err"] = err
            mem16 = memory_of(case, device, True, torch.get_num_threads()) if args.memory else (nan, nan)
            for label, key, fl, m, e in (("fwd", "fwd", flops, mem16[0], err),
                                         ("fwd+bwd", "step", 3 * flops, mem16[1], nan)):
                speed = median_ratio(t[key], t[key + "16"])
                res[key + "_speedup"] = speed
                bf.add(case.label, label, med[key] * 1e3, med[key + "16"] * 1e3, speed, e,
                       fl / med[key + "16"] / 1e9, 100 * fl / mm_flops * median_ratio(t["mm16"], t[key + "16"]), m)
        del model, x, fns
    tables += [rs, bf]

    # 4. gated cross-attention: immediate (gathers one media item) vs dense masking, growing media count
    xa = Table(f"Gated cross-attention block, B{xcase.batch} L{xcase.length} D{xcase.dim} R{xcase.latents} "
               f"H{xcase.heads}x{xcase.dim_head}, inference",
               ["media K/V", "mode", "M", "ms/call", "text tok/s", f"vs M={xcase.media_counts[0]}"],
               note=f"'{DENSE_WINDOW_1}': window:1 forced through the dense masked path (the same maths as "
                    "immediate, which MediaRouting otherwise picks for it). "
                    "'cached': K/V of the media latents precomputed by block.media_kv (as in generation); "
                    "'projected': the call includes the K/V projection of the media latents. The routing is "
                    "built once outside the timed call (a model shares it across layers). 'vs M=': median over "
                    "rounds of the time ratio to the smallest media count (all counts run round-robin).")
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(dim=xcase.dim, dim_media=xcase.dim, heads=xcase.heads, dim_head=xcase.dim_head,
                                     ff_mult=xcase.ff_mult).to(device)
    with torch.no_grad():
        block.attn_gate.alpha.fill_(0.5)
        block.ff_gate.alpha.fill_(0.5)
    L, B = xcase.length, xcase.batch
    g = torch.Generator().manual_seed(2)
    text = torch.randn(B, L, xcase.dim, generator=g).to(device)
    media_by_m = {M: torch.randn(B, M, xcase.latents, xcase.dim, generator=g).to(device) for M in xcase.media_counts}
    xattn_ratio: dict[tuple[str, str], float] = {}
    for cached in (True, False):
        kv_label = "cached" if cached else "projected"
        for mode in ("immediate", DENSE_WINDOW_1, "all_previous"):
            say(f"xattn {kv_label} {mode} ...")
            fns = {}
            for M in xcase.media_counts:
                ids = torch.zeros(B, L, dtype=torch.long)
                ids[:, torch.arange(M) * (L // M)] = 1  # evenly spaced markers, the first at token 0
                idx = media_index(ids, 1).to(device)
                media = media_by_m[M]
                routing = xattn_routing(idx, M, xcase.latents, mode)
                with torch.no_grad():
                    kv = block.media_kv(media)

                def call(media=media, kv=kv, routing=routing, cached=cached):
                    with torch.no_grad():
                        if cached:
                            return block(text, media_kv=kv, routing=routing)
                        return block(text, media, routing=routing)

                fns[M] = call
            t = rounds(fns, device, min_time=min_time, min_rounds=min_rounds)
            m0 = xcase.media_counts[0]
            for M in xcase.media_counts:
                ms = statistics.median(t[M]) * 1e3
                ratio = median_ratio(t[M], t[m0])
                xattn_ratio[(kv_label, mode, M)] = ratio
                xa.add(kv_label, mode, M, ms, B * L / (ms / 1e3), ratio)
    tables.append(xa)

    mm32_end = matmul_gflops(mm_n, torch.float32, device, min_time)
    load_end = loadavg()

    # targets, checked on the first case (the target size in a full run)
    c0 = cases[0]
    r0 = summary[c0.name]
    exec_ratio = r0["step"] * (3 * c0.forward_flops() - c0.skipped_backward_flops()) / (3 * c0.forward_flops())
    tg = Table(f"Targets (on {c0.label})", ["target", "measured", "met"],
               note="--quick: tiny sizes, where these targets do not apply." if args.quick else "")
    tg.add("resampler fwd >= 75% of fp32 matmul", f"{100 * r0['fwd']:.0f}%", yes(r0["fwd"] >= 0.75))
    tg.add("resampler fwd+bwd >= 65% of fp32 matmul", f"{100 * r0['step']:.0f}% (executed FLOPs: "
           f"{100 * exec_ratio:.0f}%)", yes(r0["step"] >= 0.65))
    if "err" in r0:
        tg.add("bf16 autocast fwd >= 1.8x fp32, rel. error < 1e-2", f"{r0['fwd_speedup']:.2f}x, {r0['err']:.1e}",
               yes(r0["fwd_speedup"] >= 1.8 and r0["err"] < 1e-2))
    m0, m1 = xcase.media_counts[0], xcase.media_counts[-1]
    r_imm = xattn_ratio[("cached", "immediate", m1)]
    r_dense = xattn_ratio[("cached", DENSE_WINDOW_1, m1)]
    tg.add(f"immediate, cached K/V: M={m1} costs about M={m0}",
           f"{r_imm:.2f}x (dense window:1: {r_dense:.2f}x)", yes(r_imm <= 1.15))
    tables.append(tg)

    head = [f"command: {command}", f"date: {started}",
            "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
            f"fp32 matmul reference: {mm32:.0f} GFLOP/s at start, {mm32_end:.0f} at end; "
            f"load average {load_start} at start, {load_end} at end"]
    text_report = "\n".join(head) + "\n\n" + "\n\n".join(t.text() for t in tables)
    md = ("\n".join(["- command: `" + command + "`"] + ["- " + h for h in head[1:]])
          + "\n\n" + "\n\n".join(t.markdown() for t in tables))
    return text_report, md


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers; text outside markers is kept."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    block = f"{start}\n{body}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def parse_args(argv: list[str], prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test); writes no file "
                                                        "unless --out is given")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help=f"markdown file whose bench section is (re)written "
                                               f"(default {DEFAULT_OUT}; '' for none)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of timed runs per function in a round-robin group (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="at least this many timed rounds per group (default 5)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory (default: on, off with --quick)")
    p.add_argument("--batch", type=int, default=None, help="batch size B of every case (default: per case)")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n x n x n reference matmul "
                                                                 "(default 2048; 256 with --quick)")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "multisense bench") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    if args.memory_child:
        print(json.dumps(_memory_child(json.loads(args.memory_child))))
        return 0
    if args.memory is None:
        args.memory = not args.quick
    if args.out is None:
        args.out = "" if args.quick else DEFAULT_OUT
    command = " ".join([prog, *argv])
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        report, md = run(args, command)
    finally:  # called in-process (the CLI, a test): leave the caller's thread count as it was
        torch.set_num_threads(threads)
    print(report)
    if args.out:
        key = args.device.split(":")[0] + ("-quick" if args.quick else "")
        write_section(Path(args.out), key, md)
        print(f"\nwritten to {args.out} (section '{key}')")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m multisense.bench.blocks"))
