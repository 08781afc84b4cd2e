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

Cases and FLOP counts: `bench.cases`; timing: `bench.timing`; peak memory: `bench.memory`.
docs/benchmarks.md explains every column.

    python -m multisense.bench.blocks                    # full run, writes docs/benchmarks.md
    python -m multisense.bench.blocks --quick --out ''   # tiny sizes, seconds, no file
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import statistics
import sys
from pathlib import Path

import torch

from ..machine import loadavg, machine
from ..markdown import Table, write_section
from ..nn import GatedCrossAttentionBlock, media_index
from .cases import DENSE_WINDOW_1, full_cases, quick_cases, resampler_steps, xattn_routing
from .memory import memory_of
from .timing import matmul_fn, matmul_gflops, median_ratio, rounds

DEFAULT_OUT = "docs/benchmarks.md"


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
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "multisense bench") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
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
