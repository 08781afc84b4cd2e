"""`multisense compare`: every registered family at the same frozen LM and vision encoder, measured.

The lecture's architecture table (lecture-notes-alternative-vlm-architectures.txt) asserts what
each design costs; this measures it on the machine it runs on:

  cost      per family, for 1-32 images per sample and video of 8-64 frames: the tokens the
            media occupy in the LM's context, forward FLOPs (counted by torch's
            FlopCounterMode), time per sample (median of repeated runs) and peak memory (the peak
            of the tensor bytes allocated during one forward, from torch.profiler's memory events).
            PaLI is measured twice: over the shared LM (its prefix-LM variant) and over the
            embedded T5, where the media's tokens are the encoder's input (COST_VARIANTS).
            A family whose sequence exceeds the LM's max_position_embeddings is marked "context
            overflow" there; its cost beyond is measured on the same LM with its position table
            stretched (weights past the trained positions random: cost only, not accuracy).
  accuracy  per family after the same training budget (steps, batch, learning rate) on the same
            data: the demo's captions and questions (one image each), and the multi-image
            few-shot task (`fewshot_mapped`, the `fewshot` preset with its steps replaced),
            where LLaVA trains on as many shots as fit its context.

Output: docs/compare.md (tables and plots) and compare.json. `--quick`: the same cells, with two
training steps and a few samples: a check that every cell is produced, not a measurement.

Shape letters: B batch (1 here), M images per sample, F frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from .. import backbones
from ..bench.memory import peak_allocated_mib
from ..bench.timing import timeit
from ..data.collate import Sample, collate
from ..data.tasks import captions
from ..encoders import load_vision_encoder
from ..machine import loadavg, machine
from ..markdown import Table, fmt, write_section
from ..models.registry import FAMILIES, get_family
from ..tokens import MEDIA_MARKER

IMAGES = (1, 2, 4, 8, 16, 32)
FRAMES = (8, 16, 32, 64)
# Each family as the demo and presets build it (the Flamingo of `multisense demo`, the LLaVA-1.5 projector).
FAMILY_OPTIONS = {
    "flamingo": dict(cross_attn_every=1, num_latents=4, resampler_depth=2, resampler_heads=4, resampler_dim_head=32,
                     xattn_heads=4, xattn_dim_head=32, ff_mult=2, qk_norm=True, max_frames=None),
    "llava": dict(),
}
# Cost rows of a family over another LM than the shared one: name -> (family, model.lm). PaLI over the
# embedded T5 reads image and prompt in its encoder: its "context tokens" are the encoder's length.
COST_VARIANTS = {"pali (T5 encoder-decoder)": ("pali", "t5")}
# Second recipes on the demo's tasks, beside each family's first: LLaVA's stage 2 (LoRA on the LM;
# LLaVA-1.5 tunes the whole LM) after its stage 1 (the projector alone). name -> (family, options).
RECIPES = {"llava + LoRA": ("llava", {"lora_rank": 16})}


@dataclasses.dataclass
class CompareConfig:
    lm: str = "default"
    vision: str = "default"
    families: tuple[str, ...] = ("flamingo", "llava")
    images: tuple[int, ...] = IMAGES
    frames: tuple[int, ...] = FRAMES
    min_time: float = 0.5  # seconds of timed runs per cell
    scene_steps: int = 1000  # the demo's budget
    fewshot_steps: int = 500
    batch_size: int = 32
    eval_samples: int = 200
    fewshot_samples: int = 100
    seed: int = 0
    quick: bool = False
    accuracy: bool = True  # train and evaluate each family (else cost only)
    recipes: bool = True  # also the second recipes (RECIPES) on the demo's tasks

    @classmethod
    def quick_config(cls, **kw) -> "CompareConfig":
        return cls(min_time=0.0, scene_steps=2, fewshot_steps=2, batch_size=4, eval_samples=4, fewshot_samples=4,
                   quick=True, **kw)


# ---------------------------------------------------------------------------------- building


def load_backbones(lm: str, vision: str):
    from ..train.trainer import load_lm

    lm_dir, vision_dir = backbones.resolve(lm, vision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm_dir)
    return load_lm(lm_dir, get_family("pali")).eval(), load_vision_encoder(vision_dir).eval(), tokenizer  # either kind


def build(family: str, lm, vision, tokenizer, seed: int = 0, options: dict | None = None):
    torch.manual_seed(seed)
    tokenizer = _copy_tokenizer(tokenizer)
    options = {**FAMILY_OPTIONS.get(family, {}), **(options or {})}
    model = get_family(family).model_class.from_lm(lm, vision, tokenizer=tokenizer, **options)
    return model.eval(), tokenizer


def _copy_tokenizer(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)  # from_lm adds the marker to it: each family gets its own


def context_of(lm) -> int | None:
    return getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)


def stretched(lm, positions: int):
    """The same LM with room for `positions` tokens: its weights, and a position table extended
    with random rows (learned positions) or just a larger limit (rotary). For cost only."""
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    for key in ("max_position_embeddings", "n_positions"):
        if hasattr(config, key):
            setattr(config, key, positions)
    torch.manual_seed(0)
    bigger = transformers.AutoModelForCausalLM.from_config(config).eval()
    own = lm.state_dict()
    state = bigger.state_dict()
    for name, tensor in own.items():
        if name in state and state[name].shape == tensor.shape:
            state[name] = tensor
        elif name in state and state[name].ndim == tensor.ndim:  # a position table: keep the trained rows
            state[name][: tensor.shape[0]] = tensor
    bigger.load_state_dict(state)
    return bigger


# ---------------------------------------------------------------------------------- cost


def cost_input(tokenizer, images: int, frames: int, size: int, seed: int = 0, seq2seq: bool = False) -> dict:
    """One sample: `images` media items of `frames` frames each, one marker per item, a question
    and its answer. A causal LM reads the answer in its sequence; an encoder-decoder (`seq2seq`)
    in its decoder, given as `labels` (the decoder's input is them shifted right)."""
    prompt = " ".join([f"{MEDIA_MARKER} a photo ." for _ in range(images)] + ["question : what colour ? answer :"])
    batch = collate([Sample(prompt, "red")], tokenizer, seq2seq=seq2seq)
    g = torch.Generator().manual_seed(seed)
    batch["pixel_values"] = torch.randn(1, images, frames, 3, size, size, generator=g)
    batch["frame_mask"] = torch.ones(1, images, frames, dtype=torch.bool)
    if not seq2seq:
        batch.pop("labels")
    return batch


def measure_cell(model, batch, min_time: float) -> dict:
    """FLOPs, seconds and peak-memory growth (MiB) of one forward pass."""
    def forward():
        with torch.no_grad():
            return model(**batch)

    forward()
    # FlopCounterMode's module tracker hooks the gradients of inputs that require them, which a
    # parameter used directly under no_grad (the resampler's latents) cannot give: count frozen.
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            forward()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    flops = counter.get_total_flops()
    peak = peak_allocated_mib(forward)
    seconds = timeit(forward, "cpu", min_time=min_time, min_runs=1 if min_time == 0 else 3, warmup=0)
    return {"flops": flops, "seconds": seconds, "peak_mib": peak}


def cost_table(cfg: CompareConfig, lm, vision, tokenizer, log=print) -> dict:
    """Per family, per input ("images=M" / "frames=F"): context tokens, overflow, FLOPs, time, memory."""
    size = vision.config.image_size
    limit = context_of(lm)
    inputs = [("images", m, 1) for m in cfg.images] + [("frames", f, f) for f in cfg.frames]
    out = {}
    variants = [(family, family, lm, tokenizer) for family in cfg.families]
    for name, (family, other) in COST_VARIANTS.items():
        if family in cfg.families:
            other_lm, _, other_tok = load_backbones(other, cfg.vision)
            variants.append((name, family, other_lm, other_tok))
    for name, family, lm, tokenizer in variants:
        model, tok = build(family, lm, vision, tokenizer, cfg.seed)
        seq2seq = getattr(model, "is_encoder_decoder", False)
        limit = context_of(lm)  # None: relative positions, no limit
        big = None
        rows = {}
        for kind, count, frames in inputs:
            images = count if kind == "images" else 1
            batch = cost_input(tok, images, frames, size, seq2seq=seq2seq)
            tokens = _tokens(model, batch)
            cell = {"context_tokens": tokens, "overflow": limit is not None and tokens > limit}
            runner = model
            if cell["overflow"]:
                if big is None:
                    need = max(_tokens(model, cost_input(tok, c if k == "images" else 1, f, size, seq2seq=seq2seq))
                               for k, c, f in inputs)
                    big, _ = build(family, stretched(lm, need + 8), vision, tokenizer, cfg.seed)
                runner = big
            cell.update(measure_cell(runner, batch, cfg.min_time))
            rows[f"{kind}={count}"] = cell
            log(f"  {name} {kind}={count}: {tokens} context tokens{' (overflow)' if cell['overflow'] else ''}, "
                f"{cell['flops'] / 1e9:.2f} GFLOP, {cell['seconds'] * 1e3:.1f} ms, {cell['peak_mib']:.1f} MiB")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        one = cost_input(tok, 1, 1, size, seq2seq=seq2seq)
        per_item = rows["images=1"]["context_tokens"] - int(one["attention_mask"].sum()) + 1
        out[name] = {"trainable_parameters": trainable, "tokens_per_image": per_item, "context_limit": limit,
                     "cells": rows}
    return {"context_limit": context_of(variants[0][2]) if variants else None, "families": out}


def _tokens(model, batch) -> int:
    return int(model.context_tokens(batch["input_ids"], batch["attention_mask"], batch.get("frame_mask")).max())


# ---------------------------------------------------------------------------------- accuracy


def scene_accuracy(cfg: CompareConfig, family: str, lm, vision, tokenizer, options: dict | None = None) -> dict:
    """The demo's captions and questions: trained `scene_steps` steps, then exact match per kind.
    `options`: the family's own keywords over FAMILY_OPTIONS (a second recipe)."""
    from ..demo import CHANCE
    from ..eval.answers import exact_match, generate_answers
    from ..train.loop import fit
    from ..train.optim import build_optimizer, warmup_cosine

    model, tok = build(family, lm, vision, tokenizer, cfg.seed, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = captions.training_batches(tok, batch_size=cfg.batch_size, seed=cfg.seed)
    optimizer = build_optimizer(model, lr=2e-3, gate_lr=0.1)
    scheduler = warmup_cosine(optimizer, warmup_steps=min(30, cfg.scene_steps), total_steps=cfg.scene_steps)
    start = time.perf_counter()
    fit(model, batches, steps=cfg.scene_steps, optimizer=optimizer, scheduler=scheduler, progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    results = {}
    for i, kind in enumerate(captions.KINDS):
        samples = captions.evaluation_set(kind, cfg.eval_samples, seed=10_000 + cfg.seed + i)
        results[kind] = {"exact_match": exact_match(generate_answers(model, tok, samples), [s.target for s in samples]),
                         "chance": CHANCE[kind], "n": len(samples)}
    return {"train_seconds": seconds, "steps": cfg.scene_steps, "kinds": results, "trainable_parameters": trainable,
            "family": family, "options": options or {}}


def fewshot_accuracy(cfg: CompareConfig, family: str, out_dir: Path) -> dict:
    """The `fewshot` preset (in-context LM, multi-image episodes) with `fewshot_steps` steps,
    through `multisense train` and the evaluation `multisense eval` runs."""
    from ..config import load_config
    from ..data.tasks import get_task
    from ..eval.fewshot import evaluate
    from ..models import AutoModel
    from ..train.trainer import TrainConfig, resolve_preset, train

    lm, vision, tokenizer = load_backbones("icl", "default")
    limit = context_of(lm) or 0
    overrides = [f"model.family={family}", f"train.steps={cfg.fewshot_steps}", "check.shots=[]",
                 f"train.out_dir={out_dir / family}", "train.progress=false", "train.resume=never",
                 f"train.seed={cfg.seed}", f"data.seed={cfg.seed}"]
    shots = [0, 2, 4, 8]
    task = get_task("fewshot_mapped")
    sizer, tok = build(family, lm, vision, tokenizer)  # only to count each episode's context tokens
    fits = [k for k in shots if _tokens(sizer, collate([task.episode(np.random.default_rng([10_000, 0, 0]), k, "eval")],
                                                       tok)) <= limit]
    if family != "flamingo":
        # its own recipe: no in-words distillation (Flamingo's objective), and as many shots as fit
        overrides += ["train.distill_words=0", f"data.max_shots={max(fits)}"]
    cfg_train = load_config(TrainConfig, resolve_preset("fewshot"), overrides)
    start = time.perf_counter()
    train(cfg_train)
    seconds = time.perf_counter() - start
    model = AutoModel.from_pretrained(out_dir / family / "model").eval()
    tok = model.tokenizer
    cells = {}
    for k in shots:
        batch = collate([task.episode(np.random.default_rng([10_000, 0, 0]), k, "eval")], tok)
        tokens = _tokens(model, batch)
        if limit and tokens > limit:
            cells[str(k)] = {"overflow": True, "context_tokens": tokens}
            continue
        result = evaluate(model, tok, task, shots=(k,), seeds=(0,), samples=cfg.fewshot_samples)
        cells[str(k)] = {"overflow": False, "context_tokens": tokens,
                         "accuracy": result["shots"][k]["accuracy"]["mean"]}
    return {"train_seconds": seconds, "steps": cfg.fewshot_steps, "max_shots": cfg_train.data.max_shots,
            "chance": 1 / len(task.answers), "shots": cells}


# ---------------------------------------------------------------------------------- report


def _table(title: str, headers: list[str], rows: list[list]) -> str:
    t = Table(title, headers)
    for row in rows:
        t.add(*row)
    return t.markdown()


def render(result: dict) -> str:
    """The tables of docs/compare.md."""
    cost, families = result["cost"], result["cost"]["families"]
    names = list(families)
    parts = [_table(f"Parameters and context (LM context limit: {cost['context_limit']} positions)", ["", *names],
                    [["trainable parameters", *[f"{families[f]['trainable_parameters']:,}" for f in names]],
                     ["LM context tokens per image", *[str(families[f]["tokens_per_image"]) for f in names]],
                     ["LM context limit", *[str(families[f].get("context_limit") or "none (relative positions)")
                                           for f in names]]])]
    keys = list(next(iter(families.values()))["cells"])
    for metric, title in (("context_tokens", "LM context tokens per sample"), ("flops", "Forward GFLOP per sample"),
                          ("seconds", "Forward ms per sample"), ("peak_mib", "Peak tensor memory of a forward (MiB)")):
        rows = []
        for key in keys:
            row = [key]
            for f in names:
                cell = families[f]["cells"][key]
                value = {"flops": cell["flops"] / 1e9, "seconds": cell["seconds"] * 1e3}.get(metric, cell[metric])
                text = f"{value:,}" if metric == "context_tokens" else fmt(float(value))
                if cell["overflow"]:
                    text += " (context overflow)" if metric == "context_tokens" else " (overflow; stretched LM)"
                row.append(text)
            rows.append(row)
        parts.append(_table(title, ["input", *names], rows))
    scenes = result.get("scenes") or {}
    if scenes:
        first = next(iter(scenes.values()))
        rows = [[k, *[fmt(scenes[f]["kinds"][k]["exact_match"]) for f in scenes], fmt(first["kinds"][k]["chance"])]
                for k in first["kinds"]]
        rows.append(["trainable parameters", *[f"{scenes[f]['trainable_parameters']:,}" for f in scenes], ""])
        rows.append(["training seconds", *[fmt(scenes[f]["train_seconds"]) for f in scenes], ""])
        parts.append(_table(f"Demo tasks: held-out exact match after {first['steps']} steps (same batch, lr, data)",
                            ["kind", *scenes, "chance"], rows))
    fewshot = result.get("fewshot") or {}
    if fewshot:
        first = next(iter(fewshot.values()))
        rows = []
        for k in first["shots"]:
            rows.append([k, *[f"context overflow ({fewshot[f]['shots'][k]['context_tokens']} tokens)"
                              if fewshot[f]["shots"][k]["overflow"] else fmt(fewshot[f]["shots"][k]["accuracy"])
                              for f in fewshot]])
        rows.append(["trained on up to", *[f"{fewshot[f]['max_shots']} shots" for f in fewshot]])
        rows.append(["training seconds", *[fmt(fewshot[f]["train_seconds"]) for f in fewshot]])
        parts.append(_table(f"Few-shot (fewshot_mapped): held-out accuracy after {first['steps']} steps "
                            f"(chance {fmt(first['chance'])})", ["shots", *fewshot], rows))
    return "\n\n".join(parts)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = result["cost"]["families"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (metric, label) in zip(axes[:3], (("seconds", "forward ms per sample"), ("flops", "forward GFLOP"),
                                              ("peak_mib", "peak memory (MiB)"))):
        for name, fam in families.items():
            keys = [k for k in fam["cells"] if k.startswith("images=")]
            xs = [int(k.split("=")[1]) for k in keys]
            ys = [fam["cells"][k][metric] * (1e3 if metric == "seconds" else 1e-9 if metric == "flops" else 1)
                  for k in keys]
            line, = ax.plot(xs, ys, marker="o", label=name)
            over = [x for x, k in zip(xs, keys) if fam["cells"][k]["overflow"]]
            if over:
                ax.axvline(over[0], color=line.get_color(), ls="--", lw=1)
                ax.annotate(f"{name}: context overflow", (over[0], ax.get_ylim()[1]), fontsize=7, rotation=90,
                            va="top", ha="right", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images per sample")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    if result.get("scenes"):
        names = list(result["scenes"])
        kinds = list(next(iter(result["scenes"].values()))["kinds"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar(np.arange(len(kinds)) + i * width, [result["scenes"][name]["kinds"][k]["exact_match"] for k in kinds],
                   width, label=name)
        ax.set_xticks(np.arange(len(kinds)) + width * (len(names) - 1) / 2, kinds, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title("demo tasks: held-out exact match", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: CompareConfig, out: Path, work: Path, log=print) -> dict:
    for name in cfg.families:
        get_family(name)
    torch.manual_seed(cfg.seed)
    lm, vision, tokenizer = load_backbones(cfg.lm, cfg.vision)
    start = time.perf_counter()
    log("cost:")
    result = {"config": dataclasses.asdict(cfg), "machine": machine("cpu"), "load": loadavg(),
              "cost": cost_table(cfg, lm, vision, tokenizer, log)}
    result["scenes"], result["fewshot"] = {}, {}
    for family in cfg.families if cfg.accuracy else ():
        log(f"demo tasks, {family}:")
        result["scenes"][family] = scene_accuracy(cfg, family, lm, vision, tokenizer)
        log(f"  {json.dumps({k: v['exact_match'] for k, v in result['scenes'][family]['kinds'].items()})}")
    for name, (family, options) in RECIPES.items() if cfg.accuracy and cfg.recipes else ():
        if family in cfg.families:
            log(f"demo tasks, {name}:")
            result["scenes"][name] = scene_accuracy(cfg, family, lm, vision, tokenizer, options)
            log(f"  {json.dumps({k: v['exact_match'] for k, v in result['scenes'][name]['kinds'].items()})}")
    if cfg.accuracy and cfg.lm == "default":  # the few-shot task needs the in-context LM
        for family in cfg.families:
            log(f"few-shot, {family}:")
            result["fewshot"][family] = fewshot_accuracy(cfg, family, work / "fewshot")
            log(f"  {json.dumps(result['fewshot'][family]['shots'])}")
    result["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "compare.png")
    (out / "compare_tables.md").write_text(render(result) + "\n")
    return result


def write_docs(result: dict, page: Path, figure: Path, command: str) -> None:
    """The measured section of docs/compare.md, with the command and the machine."""
    m = result["machine"]
    head = (f"`{command}` ({result['seconds'] / 60:.1f} min; {m.get('cpu', '')}, flags {m.get('flags', '')}, "
            f"torch threads {m.get('threads', '')}; load average {result['load']})\n\n![compare]({figure.name})")
    write_section(page, "compare", head + "\n\n" + render(result))


def main(argv: list[str] | None = None, prog: str = "multisense compare") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default="default", help="a local causal-LM directory, or the embedded 'default'")
    parser.add_argument("--vision", default="default", help="a local vision-encoder directory, or 'default'")
    over_lm = [name for name, f in FAMILIES.items() if hasattr(f.model_class, "from_lm")]
    parser.add_argument("--families", nargs="+", default=over_lm,
                        help=f"registered families built over a language model (default: {' '.join(over_lm)})")
    parser.add_argument("--quick", action="store_true", help="every cell, two training steps: a check, not a figure")
    parser.add_argument("--scene-steps", type=int, help="training steps on the demo's tasks (default: 1000)")
    parser.add_argument("--fewshot-steps", type=int, help="training steps on the few-shot task (default: 500)")
    parser.add_argument("--cost-only", action="store_true", help="measure cost only: no training, no accuracy")
    parser.add_argument("--no-recipes", action="store_true", help="skip the second recipes (LLaVA + LoRA) on the demo's tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/compare", help="where compare.json, compare.png and the tables go")
    parser.add_argument("--docs", help="also write the measured section of this page (docs/compare.md) and its plot")
    args = parser.parse_args(argv)
    for name in args.families:
        get_family(name, where="--families")
        if name not in over_lm:
            parser.error(f"--families: {name!r} is not built over a language model and an image encoder, so it has no "
                         f"row here (compare measures {', '.join(over_lm)}); its own figures: multisense experiment")
    base = {"lm": args.lm, "vision": args.vision, "families": tuple(args.families), "seed": args.seed}
    cfg = CompareConfig.quick_config(**base) if args.quick else CompareConfig(**base)
    cfg.accuracy = not args.cost_only
    cfg.recipes = not args.no_recipes
    if args.scene_steps:
        cfg.scene_steps = args.scene_steps
    if args.fewshot_steps:
        cfg.fewshot_steps = args.fewshot_steps
    out = Path(args.out)
    result = run(cfg, out, out / "work")
    if args.docs:
        page = Path(args.docs)
        figure = page.parent / "compare.png"
        figure.write_bytes((out / "compare.png").read_bytes())
        write_docs(result, page, figure, "multisense compare " + " ".join(argv if argv is not None else []))
    print(render(result))
    print(f"wrote {out / 'compare.json'}, {out / 'compare.png'}, {out / 'compare_tables.md'} in {result['seconds']:.0f} s")
    return 0
