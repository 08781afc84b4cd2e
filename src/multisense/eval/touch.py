"""Evaluation of a fusion model on held-out touch-world episodes (`multisense eval --model DIR`
when DIR holds a fusion model): accuracy with the camera visible and blocked, with any sensors
removed, and where the latents look over an episode's time.

Held out means another world seed: episode i of seed s is drawn from rng([s, i]), so seed 1's
episodes share nothing with the training seed 0's but the world's rules.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from ..data.world.tasks import TouchEpisodes, WorldData, collate_touch, world_dataset
from ..markdown import Table
from ..models.fusion import FusionModel


def batches(dataset: TouchEpisodes, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield collate_touch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


@torch.no_grad()
def predictions(model: FusionModel, dataset: TouchEpisodes, *, drop=(), batch_size: int = 32) -> tuple:
    """(predicted, true) class ids [N] with the sensors in `drop` missing (not given at all)."""
    model.eval()
    predicted, true = [], []
    for batch in batches(dataset, batch_size):
        sensors = {n: v for n, v in batch["sensors"].items() if n not in drop}
        predicted.append(model(sensors).logits.argmax(-1))
        true.append(batch["labels"])
    return torch.cat(predicted), torch.cat(true)


def accuracy(model: FusionModel, dataset: TouchEpisodes, *, drop=(), batch_size: int = 32) -> float:
    predicted, true = predictions(model, dataset, drop=drop, batch_size=batch_size)
    return float((predicted == true).float().mean())


def interval(correct: float, n: int) -> float:
    """Half-width of the normal 95% interval of an accuracy over n episodes."""
    return float(1.96 * np.sqrt(max(correct * (1 - correct), 1e-12) / n))


def subsets(names) -> list[tuple[str, ...]]:
    """Every non-empty subset of `names`, the largest first."""
    names = sorted(names)
    return [s for k in range(len(names), 0, -1) for s in itertools.combinations(names, k)]


def with_occlusion(dataset: TouchEpisodes, occlusion: float) -> TouchEpisodes:
    """The same episodes with every camera visible (0), blocked after contact (1), or drawn per episode."""
    view = TouchEpisodes.__new__(TouchEpisodes)
    view.__dict__.update(dataset.__dict__, occlusion=occlusion)
    return view


@torch.no_grad()
def attention_shift(model: FusionModel, dataset: TouchEpisodes, *, bins: int = 12, batch_size: int = 32) -> dict:
    """Where the first cross-attention's mass goes over an episode's time, per sensor:
    shares [N, bins, M] (FusionModel.attention_over_time), the sensors' names, each bin's
    centre in seconds and each episode's first contact in seconds; and the mean share of each
    sensor in the bins wholly before and wholly after first contact."""
    model.eval()
    shares = [model.attention_over_time(b["sensors"], bins=bins) for b in batches(dataset, batch_size)]
    shares = torch.cat(shares).numpy()
    seconds = dataset.episodes[0][1]["seconds"]
    edges = np.linspace(0, seconds, bins + 1)
    contact = np.array([np.argmax(a["touching"]) / len(a["touching"]) * seconds for a, _ in dataset.episodes])
    before = edges[1:][None] <= contact[:, None]  # [N, bins]
    after = edges[:-1][None] >= contact[:, None]
    names = [n for n in model.perceiver.names if n in dataset.sensors]
    mean = lambda sel: {n: float(shares[..., j][sel].mean()) for j, n in enumerate(names)}  # noqa: E731
    return {"names": names, "shares": shares, "bin_centres": (edges[:-1] + edges[1:]) / 2, "contact": contact,
            "before": mean(before), "after": mean(after)}


def evaluate(model: FusionModel, dataset: TouchEpisodes, *, occlusions=(0.0, 1.0), drop_subsets: bool = False,
             batch_size: int = 32) -> dict:
    """Accuracy at each camera occlusion, with every sensor; with `drop_subsets`, also with only
    each subset of the sensors present (camera blocked with probability 1 if it is present)."""
    n = len(dataset)
    rows = []
    for p in occlusions:
        acc = accuracy(model, with_occlusion(dataset, p), batch_size=batch_size)
        rows.append({"sensors": "+".join(sorted(dataset.sensors)), "occlusion": p, "accuracy": acc,
                     "ci95": interval(acc, n)})
    if drop_subsets:
        blocked = with_occlusion(dataset, 1.0)
        for keep in subsets(dataset.sensors):
            if len(keep) == len(dataset.sensors) and 1.0 in occlusions:
                continue  # that row is above
            drop = tuple(s for s in dataset.sensors if s not in keep)
            acc = accuracy(model, blocked, drop=drop, batch_size=batch_size)
            rows.append({"sensors": "+".join(keep), "occlusion": 1.0, "accuracy": acc, "ci95": interval(acc, n)})
    return {"task": dataset.task, "episodes": n, "world_seed": dataset.seed, "rows": rows}


def table(result: dict) -> Table:
    out = Table(f"{result['task']} on {result['episodes']} held-out episodes (world seed {result['world_seed']})",
                ["sensors", "camera blocked (p)", "accuracy", "± 95%"],
                note="camera blocked (p): the probability that the camera is blocked from the first contact on")
    for r in result["rows"]:
        out.add(r["sensors"], f"{r['occlusion']:g}", f"{r['accuracy']:.3f}", f"{r['ci95']:.3f}")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="multisense eval", description="a fusion model on held-out touch-world "
                                     "episodes: accuracy per camera occlusion and per subset of sensors")
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained (family fusion)")
    parser.add_argument("--task", default="material", help="material or slipping (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes (default: %(default)s)")
    parser.add_argument("--world-seed", type=int, default=1,
                        help="world seed of the held-out episodes; training uses 0 (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="episode length, as trained (default: 3)")
    parser.add_argument("--occlusion", type=float, nargs="+", default=[0.0, 1.0],
                        help="camera occlusion probabilities to evaluate (default: 0 1)")
    parser.add_argument("--subsets", action="store_true", help="also every subset of the sensors, camera blocked")
    parser.add_argument("--workers", type=int, default=2, help="processes that simulate uncached episodes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    for p in args.occlusion:
        if not 0 <= p <= 1:
            raise ValueError(f"--occlusion: expected probabilities in [0, 1], got {p}")
    model = FusionModel.from_pretrained(args.model)
    if model.config.class_names and args.task == "material" and len(model.config.class_names) == 2:
        raise ValueError(f"--task: {args.model} answers {model.config.class_names}; evaluate it with --task slipping")
    world = WorldData(episodes=args.episodes, seed=args.world_seed, seconds=args.seconds, workers=args.workers)
    dataset = world_dataset(world, task=args.task, sensors=tuple(model.config.sensors), log=print)
    result = evaluate(model, dataset, occlusions=tuple(args.occlusion), drop_subsets=args.subsets,
                      batch_size=args.batch_size)
    result["model"] = str(args.model)
    print(table(result).text())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(args.out + ".md").write_text(table(result).markdown() + "\n")
        print(f"wrote {args.out}.json and {args.out}.md")
    return 0
