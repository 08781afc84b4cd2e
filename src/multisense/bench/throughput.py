"""Training throughput and peak memory of the demo-size Flamingo model, as printed figures.

The model has the demo's shapes (a 4-layer, 128-wide GPT-2; a 4-layer, 128-wide CLIP vision
tower on 32x32 images with 4x4 patches; 16 latents, 2 resampler layers, a gated block before
every LM layer) with random weights: throughput does not depend on the values. Each sample is
an interleaved document of N shots "<image> w w w ." (5 tokens per image), so text grows with
the number of images as in few-shot data. A step is the library's training step
(`train.loop.fit`: token-normalised loss, backward, clipping, AdamW).

Cases, each in a fresh child process (so that peak memory is the case's own):
  1. N = 1, 4, 16 images per sample, in `immediate` and `all_previous` masking;
  2. DDP on CPU: 1 process against 2 processes under torchrun (gloo), one thread each, the
     same batch per process: scaling efficiency = samples/s(2) / (2 x samples/s(1)).

Peak memory on CPU is the growth of the peak resident set size over the timed steps (the peak
mark is reset first); on CUDA torch.cuda.max_memory_allocated.

    python -m multisense.bench.throughput               # writes its section of docs/benchmarks.md
    python -m multisense.bench.throughput --quick --out ''
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers as tf

from ..machine import loadavg, machine
from ..markdown import Table, write_section
from ..tokens import IGNORE_INDEX
from .memory import reset_peak_rss, rss_kib

DEFAULT_OUT = "docs/benchmarks.md"
WORDS_PER_SHOT = 3


def build_model(device: str, mode: str):
    from ..models import FlamingoModel

    torch.manual_seed(0)
    vocab = 64
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=1024, vocab_size=vocab,
                                          embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0))
    vision = tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, patch_size=4, hidden_size=128,
                                                    intermediate_size=512, num_hidden_layers=4,
                                                    num_attention_heads=4))
    model = FlamingoModel.from_lm(lm, vision, media_token_id=vocab - 1, cross_attn_every=1, num_latents=16,
                                  resampler_depth=2, resampler_heads=4, resampler_dim_head=32, xattn_heads=4,
                                  xattn_dim_head=32, ff_mult=2, mode=mode)
    for block in model.gated_layers:  # open gates: every branch runs and gets gradients, as mid-training
        block.attn_gate.alpha.data.fill_(0.5)
        block.ff_gate.alpha.data.fill_(0.5)
    return model.to(device)


def batch(batch_size: int, images: int, marker: int, generator: torch.Generator) -> dict:
    """B documents of `images` shots "<image> w w w ." -> model inputs with labels (no padding)."""
    shot = 2 + WORDS_PER_SHOT
    ids = torch.randint(2, marker - 1, (batch_size, images, shot), generator=generator)
    ids[:, :, 0] = marker
    ids[:, :, -1] = 1
    ids = ids.flatten(1)
    labels = ids.masked_fill(ids == marker, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    pixels = torch.randn(batch_size, images, 1, 3, 32, 32, generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


def child(spec: dict) -> dict:
    """One case in this (fresh) process: ms per step, samples/s, tokens/s, peak memory growth."""
    from ..train import distributed
    from ..train.loop import fit
    from ..train.optim import build_optimizer

    torch.set_num_threads(spec["threads"])
    env = distributed.setup(spec["device"])
    model = build_model(str(env.device), spec["mode"])
    wrapped = distributed.wrap(model, env, "ddp")
    optimizer = build_optimizer(model, lr=1e-4)
    gen = torch.Generator().manual_seed(env.rank)
    data = [batch(spec["batch"], spec["images"], model.config.media_token_id, gen) for _ in range(4)]
    stream = (data[i % len(data)] for i in range(10 ** 9))
    fit(wrapped, stream, steps=spec["warmup"], optimizer=optimizer, progress=False)  # allocator, caches
    cuda = env.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_kib("VmRSS")
    distributed.barrier()
    start = time.perf_counter()
    fit(wrapped, stream, steps=spec["steps"], optimizer=optimizer, progress=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / spec["steps"]
    peak_mib = ((torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda
                else (rss_kib("VmHWM") - base) / 1024)
    distributed.teardown()
    samples = spec["batch"] * env.world_size
    tokens = samples * data[0]["input_ids"].shape[1]
    return {"ms": seconds * 1e3, "samples_s": samples / seconds, "tokens_s": tokens / seconds, "peak_mib": peak_mib,
            "world": env.world_size}


def run_child(spec: dict, procs: int = 1) -> dict:
    cmd = [sys.executable, "-m", "multisense.bench.throughput", "--child", json.dumps(spec)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[0])


def main(argv: list[str] | None = None, prog: str = "python -m multisense.bench.throughput") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps, small batch; writes no file unless --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8, help="samples per process and step (default 8)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 10; 2 with --quick)")
    p.add_argument("--images", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--no-ddp", action="store_true", help="skip the DDP scaling cases")
    p.add_argument("--out", default=None, help=f"markdown file for the section (default {DEFAULT_OUT}; '' none)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(json.loads(args.child))
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process would print
            print(json.dumps(result))
        return 0
    steps = args.steps or (2 if args.quick else 10)
    batch_size = 2 if args.quick else args.batch
    out = ("" if args.quick else DEFAULT_OUT) if args.out is None else args.out
    base = {"device": args.device, "batch": batch_size, "threads": args.threads, "warmup": 1 if args.quick else 2,
            "steps": steps}
    started, load_start = time.strftime("%Y-%m-%d %H:%M"), loadavg()

    t1 = Table(f"Training step, demo-size model, batch {batch_size}, {args.threads} threads",
               ["images/sample", "mode", "tokens/sample", "ms/step", "samples/s", "tokens/s", "peak MiB"])
    results = {}
    for n in args.images:
        for mode in ("immediate", "all_previous"):
            r = run_child({**base, "images": n, "mode": mode})
            results[(n, mode)] = r
            t1.add(n, mode, n * (2 + WORDS_PER_SHOT), r["ms"], r["samples_s"], r["tokens_s"], r["peak_mib"])
            print(f"  {n} images, {mode}: {r['ms']:.0f} ms/step", file=sys.stderr)
    tables = [t1]
    if not args.no_ddp and args.device == "cpu":
        n = 4
        one = run_child({**base, "images": n, "mode": "immediate", "threads": 1})
        two = run_child({**base, "images": n, "mode": "immediate", "threads": 1}, procs=2)
        t2 = Table(f"DDP on CPU (gloo), {n} images/sample, batch {batch_size} per process, 1 thread per process",
                   ["processes", "ms/step", "samples/s", "scaling efficiency"],
                   note="efficiency = samples/s(2 processes) / (2 x samples/s(1 process)); "
                        "the machine has " + str(os.cpu_count()) + " cores")
        t2.add(1, one["ms"], one["samples_s"], 1.0)
        t2.add(2, two["ms"], two["samples_s"], two["samples_s"] / (2 * one["samples_s"]))
        tables.append(t2)

    info = machine(args.device)
    command = " ".join([prog, *argv])
    head = [f"command: {command}", f"date: {started}", "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
            f"load average {load_start} at start, {loadavg()} at end"]
    print("\n".join(head) + "\n\n" + "\n\n".join(t.text() for t in tables))
    if out:
        md = "\n".join(["- command: `" + command + "`"] + ["- " + h for h in head[1:]]) + "\n\n" + \
             "\n\n".join(t.markdown() for t in tables)
        key = "training-" + args.device.split(":")[0] + ("-quick" if args.quick else "")
        write_section(Path(out), key, md)
        print(f"\nwritten to {out} (section '{key}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
