"""Experiments that check the claims multisense is built on, each one command:

    multisense experiment gate_init          # tanh gates at alpha = 0 against alpha ~ N(0, 1): the
                                             #   text-only LM loss over the first 100 training steps
    multisense experiment frame_embeddings   # video with and without learned frame embeddings, and
                                             #   8 training frames -> 30 evaluation frames through
                                             #   interpolation, truncation, or no embeddings
    multisense experiment masking            # `immediate` against `all_previous` media masking on
                                             #   cross-image questions and few-shot accuracy
    multisense experiment touch_occlusion    # the touch world's experiments (experiments/touch.py):
    multisense experiment touch_attention    #   accuracy as the camera is blocked, attention over time,
    multisense experiment touch_subsets      #   missing sensors, the Perceiver's cost against full
    multisense experiment perceiver_cost     #   self-attention up to 115,200 tokens
    multisense experiment crosslingual       # PaLI's zero-shot transfer to languages never seen with an
                                             #   image (experiments/crosslingual.py), against its controls

Every run trains through `multisense train` (`train.trainer.train`) from a shipped preset and
evaluates through `multisense eval` (`eval.fewshot`). Each experiment writes
runs/experiments/<name>/result.json, docs/img/exp_<name>.png and its section of
docs/experiments.md (between markers; the prose around the sections is kept).
Claims: Flamingo (Alayrac et al. 2022), sections 2.2 (tanh gating initialised at 0) and 2.1
(learned temporal embeddings, interpolated to more frames at inference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..config import load_config
from ..data.tasks import get_task, text_corpus
from ..eval import fewshot
from ..models.scoring import scored_forward
from ..tokens import IGNORE_INDEX
from ..train.loop import token_loss_sum
from ..train.trainer import TrainConfig, resolve_preset, train
from . import crosslingual
from . import touch as touch_experiments

# Runs on other data than few-shot episodes take the fewshot preset's blocks on the default LM,
# without in-words distillation: their tasks carry no words, and the in-context LM the preset
# names knows nothing but episodes.
_DEFAULT_LM = ("model.lm=default", "train.distill_words=0", "model.flamingo.standardize_media=false")

DOCS = Path("docs/experiments.md")
IMAGES = Path("docs/img")


class Runner:
    """Shared settings of one experiment invocation: where runs go, extra overrides, eval sizes."""

    def __init__(self, out_dir: str, overrides: list[str], samples: int, seeds: tuple[int, ...],
                 steps: int | None, progress: bool, probes: bool = False):
        self.out_dir, self.overrides, self.samples, self.seeds = Path(out_dir), overrides, samples, seeds
        self.steps, self.progress, self.probes = steps, progress, probes

    def config(self, preset: str, name: str, *extra: str) -> TrainConfig:
        # no check: an experiment measures every run it trains, the ones that miss a preset's check
        # included (a masking mode that cannot learn in context is a finding)
        values = [f"train.out_dir={self.out_dir / name}", f"train.progress={str(self.progress).lower()}",
                  "train.resume=never", "check.shots=[]", "check.min_accuracy=null", *extra, *self.overrides]
        if self.steps:
            values.append(f"train.steps={self.steps}")
        return load_config(TrainConfig, resolve_preset(preset), values)

    def trained(self, preset: str, name: str, *extra: str) -> Path:
        """Train (unless a finished model with the same config is already there) -> model dir."""
        cfg = self.config(preset, name, *extra)
        model_dir = self.out_dir / name / "model"
        stamp = self.out_dir / name / "trained-config.json"
        wanted = json.dumps(json.loads(json.dumps(_asdict(cfg))), sort_keys=True)
        if not (model_dir.is_dir() and stamp.is_file() and stamp.read_text() == wanted):
            _clear(self.out_dir / name)
            train(cfg)
            stamp.write_text(wanted)
        return model_dir

    def evaluate(self, model_dir: Path, task, shots=(0,), **overrides) -> dict:
        import transformers

        from ..models import FlamingoModel

        model = FlamingoModel.from_pretrained(model_dir, **overrides)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        return fewshot.evaluate(model, tokenizer, task, shots=shots, seeds=self.seeds, samples=self.samples)


def _asdict(cfg) -> dict:
    import dataclasses

    d = dataclasses.asdict(cfg)
    d["train"].pop("progress", None)
    return d


def _clear(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _mean(result: dict, shots: int = 0, metric: str = "accuracy") -> tuple[float, float]:
    cell = result["shots"][shots][metric]
    return cell["mean"], cell["std"]


# ------------------------------------------------------------------------------ gate_init


def text_batch(tokenizer, lines: list[str]) -> dict:
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    enc = tokenizer.pad({"input_ids": [r + [tokenizer.eos_token_id] for r in ids]}, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
    return dict(enc)


@torch.no_grad()
def text_loss(model, batch: dict) -> float:
    """Mean next-token loss of text-only lines through `model` (a FlamingoModel or a bare LM)."""
    was = model.training
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out, labels = scored_forward(model, inputs, batch["labels"])
    ce, _ = token_loss_sum(out.logits, labels)
    model.train(was)
    return (ce / (batch["labels"][:, 1:] != IGNORE_INDEX).sum()).item()


def gate_init(r: Runner, *, steps: int = 100, every: int = 5) -> dict:
    """alpha = 0 vs alpha ~ N(0, 1): the LM's text-only loss through the model, first `steps` steps."""
    import transformers

    curves, frozen = {}, None
    for name, init in (("alpha = 0", None), ("alpha ~ N(0, 1)", "normal")):
        cfg = r.config("fewshot", f"gate_init/{'zero' if init is None else 'normal'}", *_DEFAULT_LM,
                       f"train.steps={steps}", f"train.save_every={steps}")
        tok = transformers.AutoTokenizer.from_pretrained(cfg.model.tokenizer or _lm_dir(cfg))
        batch = text_batch(tok, text_corpus(64, seed=12345))
        points = {}

        def setup(model, init=init):
            if init == "normal":
                g = torch.Generator().manual_seed(0)
                for block in model.gated_layers:
                    for gate in (block.attn_gate, block.ff_gate):
                        gate.alpha.data.copy_(torch.randn(gate.alpha.shape, generator=g))

        def measure(step, model):
            nonlocal frozen
            if frozen is None:
                frozen = text_loss(model.lm, batch)
            if step % every == 0:
                points[step] = text_loss(model, batch)
                return {"text_loss": points[step]}
            return None

        _clear(Path(cfg.train.out_dir))
        summary = train(cfg, setup=setup, measure=measure)
        curves[name] = {"steps": list(points), "text_loss": list(points.values()),
                        "train_loss": [h["loss"] for h in summary["history"]]}
    return {"frozen_lm_text_loss": frozen, "curves": curves, "steps": steps}


def _lm_dir(cfg: TrainConfig) -> str:
    from ..backbones import resolve

    return resolve(cfg.model.lm)[0]


def gate_init_report(res: dict):
    zero, normal = res["curves"]["alpha = 0"], res["curves"]["alpha ~ N(0, 1)"]
    marks = [s for s in (0, 5, 10, 25, 50, 100) if s in zero["steps"]]
    rows = ["| gate init | " + " | ".join(f"step {s}" for s in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, c in (("alpha = 0", zero), ("alpha ~ N(0, 1)", normal)):
        at = dict(zip(c["steps"], c["text_loss"]))
        rows.append(f"| {name} | " + " | ".join(f"{at[s]:.3f}" for s in marks) + " |")
    table = "\n".join(rows) + f"\n\nfrozen LM alone: {res['frozen_lm_text_loss']:.3f} (nats per token)"

    def plot(ax):
        for name, c in res["curves"].items():
            ax.plot(c["steps"], c["text_loss"], marker="o", ms=3, label=name)
        ax.axhline(res["frozen_lm_text_loss"], color="k", ls="--", lw=1, label="frozen LM")
        ax.set_xlabel("training step")
        ax.set_ylabel("text-only LM loss")
        ax.set_yscale("log")
        ax.legend()

    return table, plot


# ------------------------------------------------------------------------------ frame_embeddings


def frame_embeddings(r: Runner, *, train_frames: int = 8, eval_frames: int = 30) -> dict:
    with_emb = r.trained("video", "video/frame-embeddings", f"model.flamingo.max_frames={train_frames}",
                         "model.flamingo.interpolate_frames=true")
    without = r.trained("video", "video/no-frame-embeddings", "model.flamingo.max_frames=null")
    short, long = get_task("video", frames=train_frames), get_task("video", frames=eval_frames)
    rows = {
        f"{train_frames} frames, with frame embeddings": r.evaluate(with_emb, short),
        f"{train_frames} frames, without frame embeddings": r.evaluate(without, short),
        f"{eval_frames} frames, interpolated embeddings": r.evaluate(with_emb, long, interpolate_frames=True),
        f"{eval_frames} frames, truncated to the first {train_frames}":
            r.evaluate(with_emb, fewshot.TruncatedFrames(long, train_frames)),
        f"{eval_frames} frames, without frame embeddings": r.evaluate(without, long),
    }
    try:  # the table holds train_frames rows: more frames without interpolation must be refused
        r.evaluate(with_emb, long, interpolate_frames=False)
        refused = "no error (unexpected)"
    except ValueError as err:
        refused = str(err)
    return {"rows": rows, "chance": rows[next(iter(rows))]["chance"], "without_interpolation": refused}


def frame_embeddings_report(res: dict):
    lines = ["| video direction (0-shot) | accuracy | exact match |", "|---|---:|---:|"]
    for name, result in res["rows"].items():
        acc, sd = _mean(result)
        em, _ = _mean(result, metric="exact_match")
        lines.append(f"| {name} | {acc:.3f} ± {sd:.3f} | {em:.3f} |")
    table = "\n".join(lines) + (f"\n\nchance: {res['chance']:.3f}. Without interpolation, 30 frames are refused: "
                                f"`{res['without_interpolation']}`")

    def plot(ax):
        names = list(res["rows"])
        accs = [_mean(res["rows"][n])[0] for n in names]
        errs = [_mean(res["rows"][n])[1] for n in names]
        ax.barh(range(len(names)), accs, xerr=errs, color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.axvline(res["chance"], color="k", ls="--", lw=1, label="chance")
        ax.set_xlabel("accuracy")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.legend()

    return table, plot


# ------------------------------------------------------------------------------ masking


def masking(r: Runner) -> dict:
    out = {"cross_image": {}, "fewshot": {}}
    for mode in ("immediate", "all_previous"):
        model = r.trained("fewshot", f"masking/cross_image-{mode}", *_DEFAULT_LM, "data.task=cross_image",
                          "data.max_shots=2", f"model.flamingo.mode={mode}")
        out["cross_image"][mode] = r.evaluate(model, get_task("cross_image"), shots=(0,))
        model = r.trained("fewshot", f"masking/fewshot-{mode}", f"model.flamingo.mode={mode}")
        out["fewshot"][mode] = r.evaluate(model, get_task("fewshot_mapped"), shots=(0, 2, 4, 8))
    return out


def masking_report(res: dict):
    lines = ["| mode | cross-image questions (0-shot) | few-shot mapped labels: 0 | 2 | 4 | 8 shots |",
             "|---|---:|---:|---:|---:|---:|"]
    for mode in ("immediate", "all_previous"):
        ci = "{:.3f} ± {:.3f}".format(*_mean(res["cross_image"][mode]))
        fs = [_mean(res["fewshot"][mode], k)[0] for k in (0, 2, 4, 8)]
        lines.append(f"| {mode} | {ci} | " + " | ".join(f"{v:.3f}" for v in fs) + " |")
    chance = res["cross_image"]["immediate"]["chance"], res["fewshot"]["immediate"]["chance"]
    table = "\n".join(lines) + f"\n\nchance: cross-image {chance[0]:.3f}, few-shot {chance[1]:.3f}"

    def plot(ax):
        for mode in ("immediate", "all_previous"):
            ks = [0, 2, 4, 8]
            means = [_mean(res["fewshot"][mode], k) for k in ks]
            ax.errorbar(ks, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3,
                        label=f"few-shot, {mode}")
            ax.axhline(_mean(res["cross_image"][mode])[0], ls=":", color=ax.lines[-1].get_color(),
                       label=f"cross-image, {mode}")
        ax.axhline(chance[1], color="k", ls="--", lw=1, label="few-shot chance")
        ax.set_xlabel("shots")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)

    return table, plot


# ------------------------------------------------------------------------------ command

EXPERIMENTS = {
    "gate_init": (gate_init, gate_init_report),
    "frame_embeddings": (frame_embeddings, frame_embeddings_report),
    "masking": (masking, masking_report),
}
EXPERIMENTS.update(touch_experiments.EXPERIMENTS)
EXPERIMENTS.update(crosslingual.EXPERIMENTS)


def write_report(name: str, res: dict, command: str, seconds: float, docs: Path, images: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..machine import loadavg, machine
    from ..markdown import write_section

    table, plot = EXPERIMENTS[name][1](res)
    images.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    plot(ax)
    ax.set_title(name)
    fig.tight_layout()
    image = images / f"exp_{name}.png"
    fig.savefig(image, dpi=110)
    plt.close(fig)
    info = machine("cpu")
    rel = Path(*image.parts[len(docs.parent.parts):]) if image.is_relative_to(docs.parent) else image
    body = "\n".join([f"- command: `{command}`", f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
                      f"- machine: {info['cpu']} ({info['flags']}), {info['cores']} cores, torch {info['torch']}, "
                      f"load average {loadavg()} at the end", f"- wall time: {seconds / 60:.1f} min", "",
                      table, "", f"![{name}]({rel})"])
    write_section(docs, f"experiment:{name}", body)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="multisense experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("overrides", nargs="*", help="dotted training overrides for every run, e.g. optim.lr=1e-3")
    parser.add_argument("--out-dir", default="runs/experiments")
    parser.add_argument("--steps", type=int, help="training steps of every run (default: the presets')")
    parser.add_argument("--samples", type=int, default=100, help="evaluation episodes per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--docs", default=str(DOCS), help="markdown file for the results ('' for none)")
    parser.add_argument("--images", default=str(IMAGES))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--probes", action="store_true",
                        help="also the runs that probe a finding further (crosslingual: PROBES)")
    args = parser.parse_args(argv)
    runner = Runner(args.out_dir, args.overrides, args.samples, tuple(args.seeds), args.steps, args.progress,
                    args.probes)
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for name in names:
        start = time.perf_counter()
        res = EXPERIMENTS[name][0](runner)
        seconds = time.perf_counter() - start
        out = runner.out_dir / name / "result.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        table, _ = EXPERIMENTS[name][1](res)
        print(f"## {name} ({seconds / 60:.1f} min)\n\n{table}\n")
        if args.docs:
            write_report(name, res, " ".join(["multisense experiment", *argv]), seconds, Path(args.docs),
                         Path(args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
