"""Perceiver fusion at scale: one forward pass of `multisense.nn.Perceiver` over a long input
(default: 115,200 tokens, 5 cameras x 30 fps x 3 s x 256 patches, at width 1024, 64 latents),
its time, FLOPs (counted by FlopCounterMode) and peak memory (the process's peak resident set, in
a fresh process), against one full self-attention layer over the same tokens: its FLOPs counted
at the lengths that run and given by 4 N^2 D + 8 N D^2 at the full length, its time and peak
memory measured (each in a fresh process) at lengths that run, and its time extrapolated to the
full length at the FLOP rate of the longest of them.

    multisense bench perceiver [--tokens 115200] [--dim 1024] [--latents 64] [--chunk 8192] [--docs PAGE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..machine import loadavg, machine
from ..markdown import Table, write_section
from .memory import reset_peak_rss, rss_kib
from .timing import timeit


def perceiver_case(tokens: int, dim: int, latents: int, chunk: int | None, threads: int) -> dict:
    """Runs in a fresh process: builds the model and the input, then one forward's figures."""
    from ..nn import Perceiver

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Perceiver(dim=dim, num_latents=latents, modalities={"cameras": dim}, depth=2, cross_heads=8,
                      cross_dim_head=dim // 8, heads=8, dim_head=dim // 8, ff_mult=4, chunk_size=chunk).eval()
    model.requires_grad_(False)  # inference; FlopCounterMode's module hooks need no grad-requiring inputs
    x = {"cameras": torch.randn(1, tokens, dim)}
    reset_peak_rss()
    base = rss_kib("VmRSS")
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        first = time.perf_counter() - start
        peak = rss_kib("VmHWM")
        seconds = timeit(lambda: model(x), "cpu", min_time=0.0, min_runs=2, warmup=0)
        with FlopCounterMode(display=False) as counter:  # chunked: plain matmuls, all counted
            model(x)
    return {"seconds": seconds, "first_seconds": first, "flops": counter.get_total_flops(),
            "peak_rss_mib": peak / 1024, "growth_mib": (peak - base) / 1024, "input_mib": x["cameras"].numel() * 4 / 2 ** 20}


def self_attention_case(tokens: int, dim: int, threads: int, heads: int = 8) -> dict:
    """Runs in a fresh process: one self-attention layer (Q, K, V, out projections and SDPA) over
    `tokens` tokens: its time, counted FLOPs and the process's peak resident set."""
    from ..nn import Attention
    from ..nn.attention import merge_heads

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    attn = Attention(dim, heads=heads, dim_head=dim // heads).eval().requires_grad_(False)
    x = torch.randn(1, tokens, dim)
    reset_peak_rss()
    base = rss_kib("VmRSS")
    with torch.no_grad():
        attn(x)
        peak = rss_kib("VmHWM")
        seconds = timeit(lambda: attn(x), "cpu", min_time=1.0, min_runs=2, warmup=0)
        # counted on the plain math (SDPA's fused CPU kernel has no FLOP formula in FlopCounterMode)
        with FlopCounterMode(display=False) as counter:
            q, (k, v) = attn.queries(x), attn.keys_values(x)
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            attn.to_out(merge_heads(scores.softmax(-1) @ v))
    return {"seconds": seconds, "flops": counter.get_total_flops(), "peak_rss_mib": peak / 1024,
            "growth_mib": (peak - base) / 1024}


CASES = {"perceiver": perceiver_case, "self_attention": self_attention_case}


def in_fresh_process(case: str, **spec) -> dict:
    """One of CASES in a new Python process, so that its peak resident set is its own."""
    proc = subprocess.run([sys.executable, "-m", "multisense.bench.perceiver", "--child",
                           json.dumps({"case": case, **spec})], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the {case} case {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def self_attention_flops(n: int, dim: int) -> int:
    """One self-attention layer's forward FLOPs: QK^T and AV (4 N^2 D), four projections (8 N D^2)."""
    return 4 * n * n * dim + 8 * n * dim * dim


def run(tokens: int, dim: int, latents: int, chunk: int | None, threads: int, lengths: list[int]) -> dict:
    perceiver = in_fresh_process("perceiver", tokens=tokens, dim=dim, latents=latents, chunk=chunk, threads=threads)
    full = [{"tokens": n, **in_fresh_process("self_attention", tokens=n, dim=dim, threads=threads),
             "formula_flops": self_attention_flops(n, dim)} for n in lengths]
    longest = full[-1]
    # at the same FLOP rate as the longest length that ran (the N^2 part dominates both)
    full_flops = self_attention_flops(tokens, dim)
    extrapolated = longest["seconds"] * full_flops / longest["flops"]
    return {"machine": machine("cpu"), "load": loadavg(), "tokens": tokens, "dim": dim, "latents": latents,
            "chunk": chunk, "threads": threads, "perceiver": perceiver, "self_attention": full,
            "self_attention_full": {"tokens": tokens, "flops": full_flops,
                                    "seconds_extrapolated": extrapolated,
                                    "score_bytes": 8 * tokens * tokens * 4}}


def render(r: dict) -> str:
    p, f = r["perceiver"], r["self_attention_full"]
    t = Table(f"One forward over {r['tokens']:,} tokens at width {r['dim']} (batch 1, fp32, "
              f"{r['threads']} threads)", ["", "Perceiver (64 latents, chunked cross-attention, 2 latent layers)",
                                           "full self-attention, one layer", "ratio"])
    t.add("forward FLOPs", f"{p['flops'] / 1e9:,.0f} GFLOP (counted)", f"{f['flops'] / 1e12:,.1f} TFLOP (4N²D + 8ND²)",
          f"{f['flops'] / p['flops']:,.0f}x")
    t.add("time", f"{p['seconds']:.1f} s (measured)", f"{f['seconds_extrapolated'] / 60:,.0f} min (extrapolated)",
          f"{f['seconds_extrapolated'] / p['seconds']:,.0f}x")
    t.add("peak memory", f"{p['peak_rss_mib'] / 1024:.2f} GB process peak ({p['input_mib'] / 1024:.2f} GB of it the input)",
          f"{f['score_bytes'] / 2 ** 30:,.0f} GiB for the 8 heads' scores, if held", "")
    s = Table("Full self-attention where it runs (one layer, SDPA)",
              ["tokens", "time", "FLOPs counted", "4N²D + 8ND²", "process peak"])
    for row in r["self_attention"]:
        s.add(f"{row['tokens']:,}", f"{row['seconds'] * 1e3:,.0f} ms", f"{row['flops'] / 1e9:,.1f} G",
              f"{row['formula_flops'] / 1e9:,.1f} G", f"{row['peak_rss_mib']:,.0f} MiB")
    return t.markdown() + "\n\n" + s.markdown()


def main(argv: list[str] | None = None, prog: str = "multisense bench perceiver") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=115_200)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--latents", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8192, help="keys per cross-attention chunk (0: all at once)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="token counts at which full self-attention is timed")
    parser.add_argument("--docs", help="write the measured section into this page (docs/benchmarks.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CASES[spec.pop("case")](**spec)))
        return 0
    result = run(args.tokens, args.dim, args.latents, args.chunk or None, args.threads, args.lengths)
    text = render(result)
    print(text)
    m = result["machine"]
    print(json.dumps(result))
    if args.docs:
        command = "multisense bench perceiver " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(Path(args.docs), "perceiver", f"`{command.strip()}` ({m.get('cpu', '')}, flags {m.get('flags', '')}; "
                      f"load average {result['load']})\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
