"""The second main job (`make demo-touch`, `multisense demo touch`): a Perceiver fuses a robot's
camera, fingertip touch, wrist force-torque and contact audio to tell which material it touches.

1. Episodes of the MuJoCo touch world are simulated once and cached (training: world seed 0;
   held out: world seed 1). In half the training episodes the camera is blocked by the gripper
   from the first contact on.
2. A FusionModel over the four sensors (modality dropout, so any subset can answer) is trained by
   `multisense train`'s own trainer (the `touch` preset).
3. On the held-out episodes: material accuracy with the camera visible and blocked, from touch
   alone and from the camera alone; where the latents' attention goes before and after contact;
   a report with plots. A run whose blocked-camera accuracy stays under `min_accuracy` says so
   and exits with code 1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .data.world.episodes import generate
from .data.world.tasks import WorldData, world_dataset
from .demo import option
from .eval import report
from .eval.touch import accuracy, attention_shift, interval, with_occlusion
from .models.fusion import FusionModel


@dataclass
class TouchDemoConfig:
    train_episodes: int = option(240, "training episodes (world seed 0)")
    test_episodes: int = option(100, "held-out episodes (world seed 1)")
    steps: int = option(250, "optimiser steps")
    batch_size: int = option(16, "episodes per step")
    occlusion: float = option(0.5, "probability that a training episode's camera is blocked after contact")
    modality_dropout: float = option(0.5, "probability of dropping each sensor of a training sample")
    seed: int = option(0, "seed of the weights and of the batch order")
    workers: int = option(2, "processes that simulate the episodes")
    min_accuracy: float = option(0.8, "the run's check: accuracy with the camera blocked")
    out_dir: str = option("runs/demo-touch", "where the run, results, report and plots go")
    progress: bool = option(True, "show progress bars")


def run(cfg: TouchDemoConfig) -> int:
    from .train.trainer import TrainConfig, resolve_preset, train

    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    generate(cfg.train_episodes, 0, workers=cfg.workers, log=print)
    generate(cfg.test_episodes, 1, workers=cfg.workers, log=print)
    t_world = time.perf_counter() - t0

    overrides = [f"data.world.episodes={cfg.train_episodes}", f"data.world.occlusion={cfg.occlusion}",
                 f"data.batch_size={cfg.batch_size}", f"model.fusion.modality_dropout={cfg.modality_dropout}",
                 f"train.steps={cfg.steps}", f"train.save_every={cfg.steps}", f"train.seed={cfg.seed}",
                 f"data.seed={cfg.seed}", f"train.out_dir={out / 'run'}", f"train.progress={cfg.progress}",
                 "train.resume=never", "check.min_accuracy=null"]  # the demo checks (and reports) itself
    tcfg = load_config(TrainConfig, resolve_preset("touch"), overrides)
    if (out / "run").exists():  # the demo owns its out_dir: a new run replaces the last one's training
        shutil.rmtree(out / "run")
    t1 = time.perf_counter()
    summary = train(tcfg)
    t_train = time.perf_counter() - t1

    model = FusionModel.from_pretrained(out / "run" / "model").eval()
    sensors = tuple(model.config.sensors)
    test = world_dataset(WorldData(episodes=cfg.test_episodes, seed=1, workers=cfg.workers), task="material",
                         sensors=sensors)
    visible, blocked = with_occlusion(test, 0.0), with_occlusion(test, 1.0)
    others = lambda keep: tuple(s for s in sensors if s not in keep)  # noqa: E731
    rows = {"all four, camera visible": accuracy(model, visible),
            "all four, camera blocked": accuracy(model, blocked),
            "touch only": accuracy(model, blocked, drop=others(("touch",))),
            "camera only, visible": accuracy(model, visible, drop=others(("camera",))),
            "camera only, blocked": accuracy(model, blocked, drop=others(("camera",))),
            "wrist + microphone": accuracy(model, blocked, drop=others(("wrist", "microphone")))}
    shift = attention_shift(model, blocked)
    t_total = time.perf_counter() - t0
    passed = rows["all four, camera blocked"] >= cfg.min_accuracy
    results = {"config": dataclasses.asdict(cfg), "accuracy": rows, "ci95": {k: interval(v, len(test))
                                                                             for k, v in rows.items()},
               "chance": 1 / len(model.config.class_names),
               "attention": {"names": shift["names"], "before": shift["before"], "after": shift["after"],
                             "bin_centres": shift["bin_centres"].tolist(),
                             "shares_mean": shift["shares"].mean(0).tolist()},
               "seconds": {"world": t_world, "train": t_train, "total": t_total},
               "final_loss": summary["final_loss"], "check": {"min_accuracy": cfg.min_accuracy, "passed": passed}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if summary["history"]:
        report.plot_loss(summary["history"], out / "loss.png")
    report.plot_attention_shift(shift, out / "attention.png", title="camera blocked after contact")
    text = render(results)
    (out / "report.md").write_text(text)
    print(text)
    print(f"report: {out / 'report.md'}")
    if not passed:
        print(f"check FAILED: accuracy with the camera blocked {rows['all four, camera blocked']:.3f} < "
              f"{cfg.min_accuracy} (a failed run: train again with another --seed)")
    return 0 if passed else 1


def render(results: dict) -> str:
    acc, ci, att = results["accuracy"], results["ci95"], results["attention"]
    n = results["config"]["test_episodes"]
    lines = ["# Touch demo: which material is under the finger?", "",
             f"Held-out episodes: {n} (world seed 1); chance {results['chance']:.2f}. One fusion model, its "
             "sensors removed at inference for the single-sensor rows (trained with modality dropout).", "",
             "| sensors | material accuracy |", "|:---|---:|"]
    lines += [f"| {k} | {v:.3f} ± {ci[k]:.3f} |" for k, v in acc.items()]
    lines += ["", "Share of the latents' attention (first cross-attention) per sensor, camera blocked after "
              "contact, mean over episodes:", "", "| sensor | before contact | after contact |", "|:---|---:|---:|"]
    lines += [f"| {s} | {att['before'][s]:.3f} | {att['after'][s]:.3f} |" for s in att["names"]]
    sec = results["seconds"]
    lines += ["", "![attention over time](attention.png)", "",
              f"Time: world {sec['world']:.0f} s (simulated, or read from the cache), training {sec['train']:.0f} s, "
              f"in all {sec['total']:.0f} s. Check (camera blocked >= {results['check']['min_accuracy']}): "
              f"{'passed' if results['check']['passed'] else 'FAILED'}.", ""]
    return "\n".join(lines)
