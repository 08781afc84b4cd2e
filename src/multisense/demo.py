"""The main job (`make demo`, `multisense demo`): a Flamingo model that learns to see, on a CPU.

1. The embedded default backbones: a tiny GPT-2 and a tiny CLIP vision tower, pretrained by
   the library on its own procedural corpus and shipped with it (`multisense.backbones`), loaded with
   `from_pretrained` exactly like a real checkpoint, and frozen.
2. A Perceiver Resampler and tanh-gated cross-attention blocks are trained on captions and
   questions about procedural scenes (colour, shape, count, relative position).
3. Held-out scenes are captioned and questioned; the same questions go to the frozen LM with
   the images removed, so the lift from vision is visible; a report with plots is written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from . import backbones
from .data import scenes
from .data.images import to_pixel_values
from .data.tasks.captions import KINDS, OBJECT_CLASSES, evaluation_set, training_batches
from .encoders import load_vision_encoder
from .eval import report
from .eval.answers import exact_match, generate_answers
from .models import FlamingoModel
from .train.loop import fit
from .train.optim import build_optimizer, warmup_cosine
from .train.slots import LatentObjectLoss


def option(default, text: str):
    """A DemoConfig field with its `multisense demo --help` text (cli._demo reads it)."""
    return field(default=default, metadata={"help": text})


@dataclass
class DemoConfig:
    steps: int = option(1000, "optimiser steps of Flamingo training")
    batch_size: int = option(32, "scenes per step")
    lr: float = option(2e-3, "peak learning rate (AdamW; warmup, then cosine decay)")
    # A scalar alpha moves about gate_lr per Adam step: at 2e-2 the gates were still below 0.5
    # after 600 steps; at 0.1 they open within the first hundred.
    gate_lr: float = option(0.1, "learning rate of the tanh gates' alphas")
    warmup_steps: int = option(30, "steps of linear learning-rate warmup")
    # Scenes hold at most 3 objects: on ideal per-object features, 4 latents learned captions and
    # shapes as well as feeding the features to the gated blocks directly, 16 far more slowly
    # (measured: docs/history.md).
    num_latents: int = option(4, "Perceiver Resampler latents per image")
    resampler_depth: int = option(2, "Perceiver Resampler layers")
    cross_attn_every: int = option(1, "a gated cross-attention block before every n-th LM layer")
    heads: int = option(4, "attention heads of the resampler and of the cross-attention")
    dim_head: int = option(32, "width of each attention head")
    # LayerNorm on the cross-attention's queries and keys per head. Without it the attention at a
    # question's last token saturates on one latent early and stays there, and questions that
    # name an object are answered less reliably (measured: docs/history.md).
    qk_norm: bool = option(True, "LayerNorm on the cross-attention's queries and keys, per head")
    # Weight of the object-slot loss (train/slots.py): latent k names the colour, shape and place
    # of the k-th object from the left. Without it, questions that name an object are answered
    # with any colour or shape present, and position questions stay at chance.
    object_loss: float = option(1.0, "weight of the object-slot loss on the latents (0: off)")
    # Standardise the vision tower's features per channel (FlamingoConfig.standardize_media),
    # with statistics from the first calibration_batches training batches.
    standardize_media: bool = option(False, "standardise the vision tower's features per channel")
    calibration_batches: int = option(8, "training batches that measure the statistics of --standardize-media")
    eval_samples: int = option(200, "held-out scenes per question kind")
    seed: int = option(0, "seed of the trainable weights and of the training scenes")
    out_dir: str = option("runs/demo", "where the model, results, report and plots go")
    lm: str = option("default", "the frozen LM: 'default' (the embedded GPT-2) or a local directory")
    vision: str = option("default", "the frozen vision tower: 'default' (the embedded CLIP tower) or a local "
                                    "directory")
    progress: bool = option(True, "show progress bars")


CHANCE = {"caption": 0.0, **{k: 1 / len(v) for k, v in scenes.ANSWER_SETS.items()}}


def build_model(cfg: DemoConfig):
    """Load the frozen backbones through from_pretrained and wrap them in a FlamingoModel."""
    lm_dir, vision_dir = backbones.resolve(cfg.lm, cfg.vision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm_dir)
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
    vision = load_vision_encoder(vision_dir)
    torch.manual_seed(cfg.seed)
    model = FlamingoModel.from_lm(
        lm, vision, tokenizer=tokenizer, cross_attn_every=cfg.cross_attn_every, num_latents=cfg.num_latents,
        resampler_depth=cfg.resampler_depth, resampler_heads=cfg.heads, resampler_dim_head=cfg.dim_head,
        xattn_heads=cfg.heads, xattn_dim_head=cfg.dim_head, ff_mult=2, standardize_media=cfg.standardize_media,
        qk_norm=cfg.qk_norm)
    if cfg.standardize_media:
        batches = training_batches(tokenizer, batch_size=cfg.batch_size, seed=cfg.seed)
        model.calibrate_media(next(batches) for _ in range(cfg.calibration_batches))
    return model, tokenizer


def evaluate(model, tokenizer, cfg: DemoConfig, *, seed: int) -> dict[str, dict[str, float]]:
    """Exact match per kind on held-out scenes, with vision and text only."""
    results = {}
    for i, kind in enumerate(KINDS):
        samples = evaluation_set(kind, cfg.eval_samples, seed=seed + i)
        targets = [s.target for s in samples]
        with_vision = exact_match(generate_answers(model, tokenizer, samples), targets)
        text_only = exact_match(generate_answers(model, tokenizer, samples, text_only=True), targets)
        results[kind] = {"vision": with_vision, "text_only": text_only, "chance": CHANCE[kind], "n": len(samples)}
    return results


def latent_attention_figure(model, path: Path, seed: int) -> Path:
    """Where four latents of the resampler's last layer look in one held-out scene."""
    images, _ = scenes.make_scenes(1, seed=seed)
    pixels = to_pixel_values(images)[:, None, None]  # [1, 1, 1, C, H, W]
    with torch.no_grad():
        feats = model.encode_frames(pixels, None)  # [1, 1, 1, S, Dv]
        attn = model.resampler.attention_maps(feats)[0, 0]  # [R, S]
    patches = attn[:, 1:]  # drop CLIP's class token
    side = int(round(patches.shape[-1] ** 0.5))
    maps = patches.reshape(-1, side, side)
    chosen = maps.flatten(1).max(1).values.argsort(descending=True)[:4]
    return report.plot_attention(images[0], maps[chosen].numpy(), path,
                                 title="resampler latents over image patches (last layer, mean over heads)")


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tokenizer = build_model(cfg)
    t_backbones = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"backbones loaded in {t_backbones:.0f}s ({model.config.lm['name_or_path']}, "
          f"{model.config.vision['name_or_path']}); "
          f"trainable {trainable / 1e6:.2f}M, frozen {frozen / 1e6:.2f}M parameters")

    # The object-slot heads train with the model but are not part of it (not saved)
    trained = (LatentObjectLoss(model, num_classes=OBJECT_CLASSES, weight=cfg.object_loss)
               if cfg.object_loss else model)
    optimizer = build_optimizer(trained, lr=cfg.lr, gate_lr=cfg.gate_lr)
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    batches = training_batches(tokenizer, batch_size=cfg.batch_size, seed=cfg.seed, with_objects=bool(cfg.object_loss))

    def log_gates(step: int) -> dict | None:
        if step % 10 and step != 1:
            return None
        gates = model.gate_values()
        return {"gates_attn": gates["attn"], "gates_ff": gates["ff"]}

    t1 = time.perf_counter()
    history = fit(trained, batches, steps=cfg.steps, optimizer=optimizer, scheduler=scheduler,
                  progress=cfg.progress, desc="flamingo", on_step=log_gates)
    t_train = time.perf_counter() - t1
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")  # with its media marker, as `multisense eval` loads it

    t2 = time.perf_counter()
    results = evaluate(model, tokenizer, cfg, seed=10_000 + cfg.seed)
    t_eval = time.perf_counter() - t2
    timings = {"backbones_s": t_backbones, "train_s": t_train, "s_per_step": t_train / cfg.steps,
               "eval_s": t_eval, "total_s": time.perf_counter() - t0}
    summary = {"config": dataclasses.asdict(cfg), "results": results, "timings": timings,
               "final_gates": model.gate_values(), "trainable_parameters": trainable}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    report.plot_loss(history, out / "loss.png")
    report.plot_gates(history, out / "gates.png")
    latent_attention_figure(model, out / "attention.png", seed=20_000 + cfg.seed)
    (out / "report.md").write_text(render_report(summary))
    print(render_table(results, timings))
    print(f"report: {out / 'report.md'}")
    return summary


def render_table(results: dict, timings: dict) -> str:
    lines = ["| held-out task | with vision | text only (frozen LM) | chance | n |", "|---|---|---|---|---|"]
    for kind, r in results.items():
        name = "caption exact match" if kind == "caption" else f"{kind} question accuracy"
        lines.append(f"| {name} | {r['vision']:.3f} | {r['text_only']:.3f} | {r['chance']:.3f} | {r['n']} |")
    questions = [r["vision"] for k, r in results.items() if k != "caption"]
    blind = [r["text_only"] for k, r in results.items() if k != "caption"]
    lines.append(f"| all questions (mean) | {np.mean(questions):.3f} | {np.mean(blind):.3f} | "
                 f"{np.mean([CHANCE[k] for k in results if k != 'caption']):.3f} | |")
    lines.append("")
    lines.append(f"time: backbones {timings['backbones_s']:.0f}s, training {timings['train_s']:.0f}s "
                 f"({timings['s_per_step']:.2f}s/step), evaluation {timings['eval_s']:.0f}s, "
                 f"total {timings['total_s']:.0f}s")
    return "\n".join(lines)


def render_report(summary: dict) -> str:
    cfg = summary["config"]
    gates = summary["final_gates"]
    return "\n".join([
        "# multisense demo: Flamingo on procedural scenes", "",
        f"Frozen tiny GPT-2 + frozen tiny CLIP vision tower (both pretrained by the library, shipped with it); "
        f"trained a {cfg['resampler_depth']}-layer Perceiver Resampler ({cfg['num_latents']} latents) and gated "
        f"cross-attention before every {cfg['cross_attn_every']}. LM layer: "
        f"{summary['trainable_parameters'] / 1e6:.2f}M trainable parameters, {cfg['steps']} steps of batch "
        f"{cfg['batch_size']}.", "",
        render_table(summary["results"], summary["timings"]), "",
        "Final gate openings |tanh(alpha)| per gated layer: attention "
        + ", ".join(f"{g:.2f}" for g in gates["attn"]) + "; feed-forward " + ", ".join(f"{g:.2f}" for g in gates["ff"]),
        "", "![loss](loss.png)", "", "![gates](gates.png)", "", "![attention](attention.png)", ""])
