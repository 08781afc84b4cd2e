"""Evaluation of a fusion model on held-out touch-world episodes (`multisense eval --model DIR`
when DIR holds a fusion model): accuracy with the camera visible and blocked, with any sensors
removed, and where the latents look over an episode's time.

Held out means another world seed: episode i of seed s is drawn from rng([s, i]), so seed 1's
episodes share nothing with the training seed 0's but the world's rules.

A fusion model with a language model answers each episode's question in words; its prediction
is the candidate answer (the task's answer words) of the highest log-likelihood under the model,
answer and end-of-sequence tokens summed as they were trained, so accuracy is closed-set as the
head's. Rows then also hold the accuracy per question (contact: touching / slipping / lifted).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from ..data.world.tasks import (
    EVENTS,
    LM_TASKS,
    TASKS,
    TouchEpisodes,
    WorldData,
    answer_words,
    class_names,
    collate_touch,
    question_tokens,
    world_dataset,
)
from ..markdown import Table
from ..models.fusion import FusionModel
from ..tokens import IGNORE_INDEX


def batches(dataset: TouchEpisodes, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield collate_touch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


@torch.no_grad()
def predictions(model: FusionModel, dataset: TouchEpisodes, *, drop=(), batch_size: int = 32) -> tuple:
    """(predicted, true) class ids [N] with the sensors in `drop` missing (not given at all): the
    head's argmax, or with an LM the candidate answer it finds most likely (`answer_scores`)."""
    model.eval()
    predicted, true = [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate_touch(samples)
        sensors = {n: v for n, v in batch["sensors"].items() if n not in drop}
        if model.flamingo is None:
            predicted.append(model(sensors).logits.argmax(-1))
        else:
            questions = [s["question"] for s in samples]
            predicted.append(answer_scores(model, sensors, questions, answer_words(dataset.task)).argmax(-1))
        true.append(batch["labels"])
    return torch.cat(predicted), torch.cat(true)


@torch.no_grad()
def answer_scores(model: FusionModel, sensors: dict, questions: list[str], candidates: list[str]) -> torch.Tensor:
    """[B, K] log-likelihood of each candidate answer word (and eos) to each question; the
    sensors are fused once."""
    media = model.fuse(sensors).unsqueeze(1)  # [B, 1, R, D]: one media item per sample
    scores = []
    for word in candidates:
        model.lm_tokens(word)  # an answer the LM cannot say is an error, not a score of its unknown token
        text = question_tokens(questions, [word] * len(questions), model.tokenizer, model.config.answers)
        logits = model.flamingo(text["input_ids"], attention_mask=text["attention_mask"], media_latents=media,
                                use_cache=False).logits
        scores.append(sequence_log_likelihood(logits, text["labels"]))
    return torch.stack(scores, -1)


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] summed log-probability of the labelled tokens (labels [B, L], logits at t predict t + 1)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(-1)


def accuracy(model: FusionModel, dataset: TouchEpisodes, *, drop=(), batch_size: int = 32) -> float:
    predicted, true = predictions(model, dataset, drop=drop, batch_size=batch_size)
    return float((predicted == true).float().mean())


def _row(model: FusionModel, dataset: TouchEpisodes, sensors: str, occlusion: float, drop=(),
         batch_size: int = 32) -> dict:
    """One row of `evaluate`: accuracy and its interval; with an LM, also per question."""
    predicted, true = predictions(model, with_occlusion(dataset, occlusion), drop=drop, batch_size=batch_size)
    correct = (predicted == true).float()
    acc, n = float(correct.mean()), len(dataset)
    row = {"sensors": sensors, "occlusion": occlusion, "accuracy": acc, "ci95": interval(acc, n)}
    if model.flamingo is not None:
        questions = np.array([dataset.question(i)[0] for i in range(n)])
        row["questions"] = {q: {"accuracy": float(correct[torch.from_numpy(questions == q)].mean()),
                                "episodes": int((questions == q).sum())} for q in sorted(set(questions))}
    return row


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
    """Where the first cross-attention's mass goes over an episode's time, per sensor: mass
    [N, bins, M] (FusionModel.attention_over_time: one softmax over the whole episode, summed per
    time slice; 1 over slices and sensors), shares [N, bins, M] (each slice's mass split between
    the sensors: 1 over sensors), the sensors' names, each bin's centre in seconds and each
    episode's first contact in seconds; and the mean share of each sensor in the bins wholly
    before and wholly after first contact."""
    model.eval()
    mass = [model.attention_over_time(b["sensors"], bins=bins) for b in batches(dataset, batch_size)]
    mass = torch.cat(mass).numpy()
    in_slice = mass.sum(-1, keepdims=True)
    shares = np.divide(mass, in_slice, out=np.zeros_like(mass), where=in_slice > 0)  # a slice with no token: 0
    seconds = dataset.episodes[0][1]["seconds"]
    edges = np.linspace(0, seconds, bins + 1)
    contact = np.array([np.argmax(a["touching"]) / len(a["touching"]) * seconds for a, _ in dataset.episodes])
    before = edges[1:][None] <= contact[:, None]  # [N, bins]
    after = edges[:-1][None] >= contact[:, None]
    names = [n for n in model.perceiver.names if n in dataset.sensors]
    mean = lambda sel: {n: float(shares[..., j][sel].mean()) for j, n in enumerate(names)}  # noqa: E731
    return {"names": names, "mass": mass, "shares": shares, "bin_centres": (edges[:-1] + edges[1:]) / 2,
            "contact": contact, "before": mean(before), "after": mean(after)}


def evaluate(model: FusionModel, dataset: TouchEpisodes, *, occlusions=(0.0, 1.0), drop_subsets: bool = False,
             batch_size: int = 32) -> dict:
    """Accuracy at each camera occlusion, with every sensor; with `drop_subsets`, also with only
    each subset of the sensors present (camera blocked with probability 1 if it is present)."""
    n = len(dataset)
    rows = [_row(model, dataset, "+".join(sorted(dataset.sensors)), p, batch_size=batch_size) for p in occlusions]
    if drop_subsets:
        for keep in subsets(dataset.sensors):
            if len(keep) == len(dataset.sensors) and 1.0 in occlusions:
                continue  # that row is above
            drop = tuple(s for s in dataset.sensors if s not in keep)
            rows.append(_row(model, dataset, "+".join(keep), 1.0, drop=drop, batch_size=batch_size))
    answers = np.array([dataset.question(i)[1] for i in range(n)])
    majority = float(np.bincount(answers).max() / n)  # always giving the commonest answer
    return {"task": dataset.task, "episodes": n, "world_seed": dataset.seed, "majority": majority, "rows": rows,
            "answers": "words, scored by the LM" if model.flamingo is not None else "classification head"}


def table(result: dict) -> Table:
    note = "camera blocked (p): the probability that the camera is blocked from the first contact on"
    if "majority" in result:
        note += f"; always the commonest answer: {result['majority']:.3f}"
    questions = sorted({q for r in result["rows"] for q in r.get("questions", {})})
    questions = questions if len(questions) > 1 else []  # one question: its accuracy is the row's
    short = {text: event for event, text in EVENTS.items()}
    out = Table(f"{result['task']} on {result['episodes']} held-out episodes (world seed {result['world_seed']})",
                ["sensors", "camera blocked (p)", "accuracy", "± 95%", *(short.get(q, q) for q in questions)],
                note=note)
    for r in result["rows"]:
        per = [f"{r['questions'][q]['accuracy']:.3f}" if q in r.get("questions", {}) else "" for q in questions]
        out.add(r["sensors"], f"{r['occlusion']:g}", f"{r['accuracy']:.3f}", f"{r['ci95']:.3f}", *per)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="multisense eval", description="a fusion model on held-out touch-world "
                                     "episodes: accuracy per camera occlusion and per subset of sensors")
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained (family fusion)")
    parser.add_argument("--task", default="material", choices=TASKS,
                        help="material, slipping, or contact (a model with an LM) (default: %(default)s)")
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
    if model.config.class_names and model.config.class_names != class_names(args.task):
        # a head's class ids mean its own task's answers: another task's labels would be compared with them
        fits = [t for t in TASKS if t not in LM_TASKS and class_names(t) == model.config.class_names]
        raise ValueError(f"--task: {args.model} answers {model.config.class_names}, not {args.task}'s "
                         f"{class_names(args.task)}" + (f"; evaluate it with --task {fits[0]}" if fits else ""))
    if model.flamingo is None and args.task in LM_TASKS:
        raise ValueError(f"--task: {args.task} asks about several events, named in the question; {args.model} has a "
                         "classification head and no LM to read it")
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
