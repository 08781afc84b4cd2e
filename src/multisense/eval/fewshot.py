"""Few-shot evaluation (Flamingo, Alayrac et al. 2022, section 3): k demonstrations from a
held-out pool, then a query, for k in 0/2/4/8 and several seeds; mean and spread per k.

Three measures per episode:
- exact_match: the greedy continuation, cut at the first shot separator ".", equals the answer;
- accuracy: among the task's closed answer set, the answer the model gives the highest
  log-likelihood is the right one (Flamingo's scoring for classification), when the set is known;
- token_accuracy and nll: teacher-forced, over the answer's tokens and end-of-sequence.

Shape letters: B episodes, K candidate answers, L text length, M media, F frames.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from ..data.collate import Sample, collate
from ..data.tasks import SEPARATOR, Task
from ..models.conventions import context_limit
from ..models.scoring import is_encoder_decoder, label_layout, scored_forward
from ..tokens import IGNORE_INDEX
from .answers import generate_answers

EVAL_SEED = 10_000  # episode seeds are (EVAL_SEED, seed, i): disjoint from training's (seed, i)


def cut_answer(text: str) -> str:
    """The answer part of a continuation: words up to the first shot separator '.'."""
    words = text.split()
    return " ".join(words[: words.index(".")] if "." in words else words)


@torch.no_grad()
def _target_scores(model, tokenizer, prompts: list[Sample], targets: list[str],
                   media: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced log-likelihood [B], correct-token count [B] and token count [B] of each target."""
    seq2seq = is_encoder_decoder(model)
    batch = collate([Sample(p.prompt, t, p.media) for p, t in zip(prompts, targets)], tokenizer, seq2seq=seq2seq)
    labels = batch.pop("labels")
    if media is not None:  # precomputed vision features: skip the encoder for every candidate
        batch.pop("pixel_values", None)
        batch.update(media)
    layout = label_layout(model)  # as training runs the model (a plain LM, for --in-words: its kind's)
    out, labels = scored_forward(model, batch, labels, layout)
    logits = out.logits.float()
    if layout.shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    loglik = (logp * keep).sum(-1)
    correct = ((logits.argmax(-1) == labels) & keep).sum(-1)
    return loglik, correct, keep.sum(-1)


def _media(model, tokenizer, chunk: list[Sample]) -> dict | None:
    """The chunk's media encoded once (media_features, frame_mask), for every candidate scored."""
    if not chunk[0].media:
        return None
    pixels = collate(chunk, tokenizer)
    feats = model.encode_frames(pixels["pixel_values"], pixels["frame_mask"])  # [B, M, F, S, Dv]
    return {"media_features": feats, "frame_mask": pixels["frame_mask"]}


@torch.no_grad()
def candidate_scores(model, tokenizer, episodes: list[Sample], candidates: tuple[str, ...], *,
                     batch_size: int = 16) -> torch.Tensor:
    """[N, K] log-likelihood of each candidate answer (its tokens and end-of-sequence,
    teacher-forced) for each episode; each episode's media are encoded once."""
    was_training = model.training
    model.eval()
    rows = []
    for i in range(0, len(episodes), batch_size):
        chunk = episodes[i:i + batch_size]
        media = _media(model, tokenizer, chunk)
        rows.append(torch.stack([_target_scores(model, tokenizer, chunk, [a] * len(chunk), media)[0]
                                 for a in candidates], -1))  # [B, K]
    model.train(was_training)
    return torch.cat(rows)


def best_answers(model, tokenizer, episodes: list[Sample], candidates: tuple[str, ...], *,
                 batch_size: int = 16) -> list[str]:
    """For each episode, the candidate answer the model gives the highest log-likelihood:
    Flamingo's scoring for classification."""
    scores = candidate_scores(model, tokenizer, episodes, candidates, batch_size=batch_size)
    return [candidates[j] for j in scores.argmax(-1).tolist()]


def fitting(model, tokenizer, episodes: list[Sample]) -> list[bool]:
    """Whether each episode, its answer included, fits the LM's context (media tokens counted)."""
    limit = context_limit(model) if hasattr(model, "context_tokens") else None
    if limit is None:
        return [True] * len(episodes)
    fits = []
    for i in range(0, len(episodes), 64):
        batch = collate(episodes[i:i + 64], tokenizer, seq2seq=is_encoder_decoder(model))
        fits += (model.context_tokens(batch["input_ids"], batch["attention_mask"], batch.get("frame_mask"))
                 <= limit).tolist()
    return fits


@torch.no_grad()
def score_episodes(model, tokenizer, episodes: list[Sample], answers: tuple[str, ...] | None, *,
                   batch_size: int = 16) -> dict[str, float]:
    """Exact match, closed-set accuracy, token accuracy and NLL over a list of episodes. Episodes
    that do not fit the LM's context are not scored (a budget would have dropped their media):
    `overflow` is their share, as `compare` marks such cells."""
    fits = fitting(model, tokenizer, episodes)
    if not any(fits):
        raise ValueError(f"episodes: none of the {len(episodes)} fits the LM's context of {context_limit(model)} "
                         "tokens (media tokens included); use fewer shots or frames, or an LM with more positions")
    overflow = 1 - sum(fits) / len(episodes)
    episodes = [e for e, ok in zip(episodes, fits) if ok]
    was_training = model.training
    model.eval()
    preds = [cut_answer(p) for p in generate_answers(model, tokenizer, episodes, batch_size=batch_size)]
    em = float(np.mean([p == " ".join(e.target.split()) for p, e in zip(preds, episodes)]))
    loglik_sum, correct, tokens = 0.0, 0, 0
    for i in range(0, len(episodes), batch_size):
        chunk = episodes[i:i + batch_size]
        ll, ok, n = _target_scores(model, tokenizer, chunk, [e.target for e in chunk], _media(model, tokenizer, chunk))
        loglik_sum, correct, tokens = loglik_sum + ll.sum().item(), correct + ok.sum().item(), tokens + n.sum().item()
    out = {"exact_match": em, "token_accuracy": correct / max(1, tokens), "nll": -loglik_sum / max(1, tokens),
           "overflow": overflow}
    if answers:
        best = best_answers(model, tokenizer, episodes, answers, batch_size=batch_size)
        out["accuracy"] = sum(b == e.target for b, e in zip(best, episodes)) / len(episodes)
    model.train(was_training)
    return out


def evaluate(model, tokenizer, task: Task, *, shots: tuple[int, ...] = (0, 2, 4, 8), seeds: tuple[int, ...] = (0, 1, 2),
             samples: int = 100, batch_size: int = 16) -> dict:
    """Every (shots, seed) cell, and per shots the mean and standard deviation over seeds."""
    cells = {}
    for k in shots:
        per_seed = []
        for seed in seeds:
            episodes = [task.episode(np.random.default_rng([EVAL_SEED, seed, i]), k, "eval") for i in range(samples)]
            per_seed.append(score_episodes(model, tokenizer, episodes, task.answers, batch_size=batch_size))
        summary = {}
        for metric in per_seed[0]:
            values = [r[metric] for r in per_seed]
            summary[metric] = {"mean": statistics.fmean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": values}
        cells[k] = summary
    chance = 1 / len(task.answers) if task.answers else None
    return {"task": task.name, "task_repr": repr(task), "samples": samples, "seeds": list(seeds),
            "chance": chance, "shots": cells}


def markdown_table(result: dict) -> str:
    """One row per shot count: mean ± std over seeds of every metric."""
    metrics = list(next(iter(result["shots"].values())))
    lines = [f"| shots | {' | '.join(metrics)} |", "|---|" + "---|" * len(metrics)]
    for k, cell in result["shots"].items():
        lines.append(f"| {k} | " + " | ".join(f"{cell[m]['mean']:.3f} ± {cell[m]['std']:.3f}" for m in metrics) + " |")
    if result["chance"] is not None:
        lines.append(f"\nchance accuracy: {result['chance']:.3f}; {result['samples']} episodes x "
                     f"{len(result['seeds'])} seeds per row")
    return "\n".join(lines)


def write(result: dict, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(f"### {result['task']}\n\n{markdown_table(result)}\n")
    return json_path, md_path


def main(argv: list[str]) -> int:
    import argparse

    import transformers
    import yaml

    from ..data.tasks import get_task
    from ..models import AutoModel
    from ..models.registry import family_of

    # defaults are in the help texts (ArgumentDefaultsHelpFormatter would add "default: None" to every flag)
    parser = argparse.ArgumentParser(prog="multisense eval", description="few-shot evaluation of a trained model")
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained (e.g. runs/x/model)")
    parser.add_argument("--task", required=True, help="a task name from multisense.data.tasks")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: the one saved in --model)")
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="task keyword, e.g. frames=30 (repeatable)")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 2, 4, 8], help="demonstrations per episode (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="evaluation seeds: the spread over them is reported (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=100, help="episodes per (shots, seed) (default: %(default)s)")
    parser.add_argument("--mode", help="override the media masking mode (immediate, all_previous, window:k)")
    parser.add_argument("--interpolate-frames", action=argparse.BooleanOptionalAction, default=None,
                        help="override the model's interpolation of frame embeddings (default: the model's own)")
    parser.add_argument("--truncate-frames", type=int, help="keep only the first N frames of every clip")
    parser.add_argument("--in-words", action="store_true",
                        help="evaluate the language model alone on the episodes in words (media described); "
                             "--model may then also be a plain Hugging Face causal-LM directory")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes per forward pass (default: %(default)s)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)

    task_args = {}
    for item in args.task_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--task-arg {item!r}: expected KEY=VALUE")
        task_args[key] = yaml.safe_load(value)
    overrides = {k: v for k, v in (("mode", args.mode), ("interpolate_frames", args.interpolate_frames))
                 if v is not None}
    if not Path(args.model).is_dir():  # transformers would take it for a Hub repo id
        raise FileNotFoundError(f"--model: expected a local directory written by save_pretrained (with "
                                f"--in-words, or a causal-LM directory), got {args.model!r} (no such directory)")
    tokenizer_dir = args.tokenizer or args.model
    if not any((Path(tokenizer_dir) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{'--tokenizer' if args.tokenizer else '--model'}: {tokenizer_dir} holds no tokenizer "
                                "(tokenizer.json or tokenizer_config.json); save_pretrained writes one when the model "
                                "has it (from_lm(..., tokenizer=...)), or name one with --tokenizer DIR")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    task = get_task(args.task, **task_args)
    if args.truncate_frames:
        task = TruncatedFrames(task, args.truncate_frames)
    if args.in_words:
        config = json.loads((Path(args.model) / "config.json").read_text())
        ours = "family" in config or "architecture" in config  # a multisense checkpoint: evaluate its LM
        model = AutoModel.from_pretrained(args.model).lm if ours else \
            transformers.AutoModelForCausalLM.from_pretrained(args.model)
        task = InWords(task)
    else:
        family_of(args.model)  # a clear error for a directory that is not a multisense checkpoint
        model = AutoModel.from_pretrained(args.model, **overrides)
    result = evaluate(model, tokenizer, task, shots=tuple(args.shots), seeds=tuple(args.seeds),
                      samples=args.samples, batch_size=args.batch_size)
    result["model"], result["overrides"] = str(args.model), {**overrides, "truncate_frames": args.truncate_frames}
    print(markdown_table(result))
    if args.out:
        for path in write(result, args.out):
            print(f"wrote {path}")
    return 0


class TruncatedFrames:
    """A task whose clips keep only their first `frames` frames (the truncation baseline)."""

    def __init__(self, task: Task, frames: int):
        self.task, self.frames = task, frames
        self.name, self.answers = task.name, task.answers

    def __repr__(self) -> str:
        return f"TruncatedFrames({self.task!r}, frames={self.frames})"

    def episode(self, rng, shots: int, split: str) -> Sample:
        s = self.task.episode(rng, shots, split)
        return Sample(s.prompt, s.target, [m[: self.frames] for m in s.media])


class InWords:
    """A task's episodes in words: every media item replaced by its description, no media. What
    the frozen LM can do in context once an image reads like its description: the ceiling for
    Flamingo on the same task, measurable on the LM alone.

    Episodes come from `Task.word_episode`: for the classification tasks, the very episode the
    task draws with images from the same generator (the same classes, labels and order)."""

    def __init__(self, task: Task):
        self.task = task
        self.name, self.answers = f"{task.name} (in words)", task.answers

    def __repr__(self) -> str:
        return f"InWords({self.task!r})"

    def episode(self, rng, shots: int, split: str) -> Sample:
        pairs = self.task.word_episode(rng, shots, split)
        demos = [f"{prompt} {answer}" for prompt, answer in pairs[:-1]]
        return Sample(SEPARATOR.join(demos + [pairs[-1][0]]), pairs[-1][1])
