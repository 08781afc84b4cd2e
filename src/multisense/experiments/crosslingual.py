"""`multisense experiment crosslingual`: PaLI's zero-shot cross-lingual transfer, measured.

The lecture's design question 3 (and PaLI, Chen et al. 2022): a model trained on image captions
and questions in one language, plus text-only translation pairs, answers questions about images
asked in another language it never saw paired with an image. Three invented languages
(`data.languages`: aa subject-verb-object, bb subject-object-verb, cc verb-subject-object with
adjectives after nouns; no shared word forms), the `pali` preset (the embedded T5, trained
whole, reading the embedded vision tower's tokens through a trained projector; the tower, already
trained on these scenes, is kept frozen), three training conditions at each training seed of
`--seeds`:

    transfer         images with captions and questions in aa; translation pairs aa <-> bb, aa <-> cc
    no translation   the same images in aa, no translation pairs: the control, expected at chance in bb, cc
    ceiling          the images with captions and questions in all three languages (and the pairs)

and, for the transfer condition, the other families on the same data at the first seed: Flamingo
(a frozen LM) and LLaVA (a frozen LM, the projector trained), over a tiny GPT-2 that this
experiment pretrains on the same monolingual text as the embedded T5 (`multilingual_lm`; cached in
the run folder). Every run trains STEPS steps (600; `--steps` to change). With `--probes`, at the
first seed: a probe of what transfer depends on (PROBES: the transfer data plus text-only
questions in bb and cc answered from a caption in the prompt; no image still comes with bb or
cc), and PaLI's decoder-only prefix-LM variant over the same GPT-2 (the LM trained).
Evaluation: questions of each kind (colour, shape, count, position) in each language about
held-out scenes, `--samples` per kind,
scored closed-set among the asked language's answer words (`multisense eval`'s accuracy) and,
by concept, among those and the pivot's (`_evaluate`); and greedy translation exact match
aa -> bb and aa -> cc (did the model learn to translate at all?), `--samples` sentences each.
Runs train and evaluate two at a time, one thread each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import languages as ml
from ..data.tasks import get_task
from ..eval import fewshot

CONDITIONS = {
    "transfer": {"langs": ["aa"], "translation": 0.5},
    "no translation": {"langs": ["aa"], "translation": 0.0},
    "ceiling": {"langs": list(ml.LANGUAGES), "translation": 0.5},
}
# Training steps of every run unless --steps says (the `pali` preset trains 1000): eleven runs
# of 600 steps, two at a time, fit the experiment in 20 minutes on 2 cores
STEPS = 600
# With --probes, at the first seed: what transfer depends on (the transfer data plus text-only
# questions in bb and cc answered from a caption in the prompt, so the decoder has answered in
# those languages, though never about an image), and PaLI's prefix-LM variant (PROBE_FAMILIES).
PROBES = {"transfer + text answers in bb, cc": {"langs": ["aa"], "translation": 0.4, "text_answers": 0.2}}
# the other families, on the transfer condition's data, over the experiment's causal LM
FAMILIES = {
    "Flamingo (frozen LM)": ("flamingo", ("model.flamingo.num_latents=16", "model.flamingo.resampler_depth=2",
                                          "model.flamingo.resampler_heads=4", "model.flamingo.resampler_dim_head=32",
                                          "model.flamingo.xattn_heads=4", "model.flamingo.xattn_dim_head=32",
                                          "model.flamingo.ff_mult=2", "model.flamingo.standardize_media=true",
                                          "optim.gate_lr=0.1")),
    "LLaVA (frozen LM, projector)": ("llava", ()),
}
PROBE_FAMILIES = {"PaLI prefix-LM (LM trained)": ("pali", ())}


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-").replace("(", "").replace(")", "").replace(",", "")


def multilingual_lm(out: Path, *, steps: int = 400, seed: int = 0) -> Path:
    """A tiny GPT-2 (4 layers x 128, as the demo's) over the T5's tokenizer, pretrained on the same
    monolingual three-language text, for the families that need a causal LM; built once into `out`."""
    import torch
    import transformers

    from ..backbones.language import lm_batches
    from ..backbones.pretraining import pretrain, save
    from ..files import atomic_directory

    if (out / "config.json").is_file():
        return out
    from ..backbones import Backbones

    tokenizer = transformers.AutoTokenizer.from_pretrained(Backbones.at().t5)

    def make(folder: Path) -> None:
        torch.manual_seed(seed)
        config = transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=256, embd_pdrop=0.0,
                                         resid_pdrop=0.0, attn_pdrop=0.0, vocab_size=len(tokenizer),
                                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)
        model = transformers.GPT2LMHeadModel(config)
        batches = lm_batches(tokenizer, ml.text_corpus(40_000, seed), batch_size=32, seed=seed)
        summary = pretrain(model, batches, steps=steps, lr=2e-3, desc="pretraining multilingual GPT-2", progress=False)
        save(model, tokenizer, folder, summary)

    atomic_directory(out, make)
    return out


def _evaluate(model_dir: Path, samples: int, seed: int = 0, pivot: str = "aa") -> dict:
    """Question accuracy per language and kind, two ways, and translation exact match, of a saved
    model; `samples` questions per cell (held-out scenes: `multisense eval`'s episode seeds) and
    sentences per translation direction.

    `accuracy`: closed-set among the answer words of the language asked (`multisense eval --task
    multilingual`): the answer must be right and in that language. `any_language`: closed-set
    among those words and the pivot's, scored by the concept the chosen word names: right in
    either language. A model that reads a question in bb and answers it in aa, the only language
    it ever answered an image question in, scores on the second and not the first.
    `in_pivot`: the share of those choices that were the pivot's words."""
    import transformers

    from ..eval.answers import exact_match, generate_answers
    from ..models import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    accuracy, any_language, in_pivot = {}, {}, {}
    for lang in ml.LANGUAGES:
        for kind in ml.QUESTION_KINDS:
            task = get_task("multilingual", langs=[lang], kinds=[kind])
            episodes = [task.episode(np.random.default_rng([fewshot.EVAL_SEED, seed, i]), 0, "eval")
                        for i in range(samples)]
            truth = [ml.answer_concept(e.target, lang) for e in episodes]
            # the asked language's answer words first, then the pivot's (none for the pivot itself)
            words = {w: (lang, ml.answer_concept(w, lang)) for w in task.answers}
            words.update({w: (pivot, ml.answer_concept(w, pivot)) for w in ml.ANSWER_SETS[pivot][kind]})
            candidates = tuple(words)
            scores = fewshot.candidate_scores(model, tokenizer, episodes, candidates)  # [N, K]
            own = [candidates[j] for j in scores[:, :len(task.answers)].argmax(-1).tolist()]
            either = [candidates[j] for j in scores.argmax(-1).tolist()]
            accuracy[f"{lang}/{kind}"] = float(np.mean([a == e.target for a, e in zip(own, episodes)]))
            any_language[f"{lang}/{kind}"] = float(np.mean([words[w][1] == c for w, c in zip(either, truth)]))
            in_pivot[f"{lang}/{kind}"] = float(np.mean([words[w][0] == pivot for w in either]))
    translation = {}
    for tgt in ("bb", "cc"):
        pairs = ml.translation_samples(7, samples, pairs=[(pivot, tgt)])
        predictions = generate_answers(model, tokenizer, pairs, max_new_tokens=24)
        translation[f"{pivot}->{tgt}"] = exact_match(predictions, [p.target for p in pairs])
    return {"accuracy": accuracy, "any_language": any_language, "in_pivot": in_pivot, "translation": translation}


def _per_language(accuracy: dict) -> dict:
    return {lang: float(np.mean([accuracy[f"{lang}/{k}"] for k in ml.QUESTION_KINDS])) for lang in ml.LANGUAGES}


def _job(r, extra: tuple[str, ...], name: str) -> dict:
    """Train one run (unless done) and evaluate it: a worker process's whole job, one thread."""
    import torch

    from ..train.loop import hf_progress

    torch.set_num_threads(1)
    with hf_progress(r.progress):
        return _evaluate(r.trained("pali", name, *extra), r.samples)


def crosslingual(r, *, workers: int = 2) -> dict:
    """Every condition at every training seed, and the other families at the first seed, trained
    and evaluated `workers` runs at a time (each on one thread: these small models run almost as
    fast on one thread as on two, so two at once nearly halve the wall time on 2 cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..train.loop import hf_progress

    def data(task_args: dict, seed: int) -> tuple[str, ...]:
        return (f"train.steps={STEPS}", f"data.task_args={json.dumps(task_args)}", f"train.seed={seed}",
                f"data.seed={seed}")

    first = r.seeds[0]
    jobs = {(condition, seed): (data(task_args, seed), f"crosslingual/{_slug(condition)}-seed{seed}")
            for condition, task_args in CONDITIONS.items() for seed in r.seeds}
    jobs.update({(probe, first): (data(task_args, first), f"crosslingual/{_slug(probe)}-seed{first}")
                 for probe, task_args in (PROBES.items() if r.probes else ())})
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(_job, r, extra, name) for key, (extra, name) in jobs.items()}
        # the other families' causal LM, pretrained here while the pool trains PaLI: 400 steps, or
        # as long as the runs train if --steps says fewer (the tests' 2 steps)
        steps = min(r.steps or 400, 400)
        with hf_progress(r.progress):
            lm = multilingual_lm(r.out_dir / "crosslingual" / f"multilingual-gpt2-{steps}steps", steps=steps)
        for label, (family, extra) in {**FAMILIES, **(PROBE_FAMILIES if r.probes else {})}.items():
            futures[label, first] = pool.submit(
                _job, r, (f"model.family={family}", f"model.lm={lm}", *data(CONDITIONS["transfer"], first), *extra),
                f"crosslingual/{family}-transfer-seed{first}")
        runs = {}
        for (label, seed), future in futures.items():
            runs.setdefault(label, {})[seed] = future.result()
    chance = {lang: float(np.mean([ml.chance(lang, k) for k in ml.QUESTION_KINDS])) for lang in ml.LANGUAGES}
    summary = {}
    for label, per_seed in runs.items():
        langs = np.array([[_per_language(res["accuracy"])[lang] for lang in ml.LANGUAGES] for res in per_seed.values()])
        either = np.array([[_per_language(res["any_language"])[lang] for lang in ml.LANGUAGES]
                           for res in per_seed.values()])
        trans = np.array([[res["translation"][k] for k in ("aa->bb", "aa->cc")] for res in per_seed.values()])
        summary[label] = {"seeds": list(per_seed), "mean": langs.mean(0).tolist(), "std": langs.std(0).tolist(),
                          "per_seed": langs.tolist(), "any_language_mean": either.mean(0).tolist(),
                          "any_language_std": either.std(0).tolist(), "translation": trans.mean(0).tolist()}
    return {"languages": list(ml.LANGUAGES), "chance": chance, "summary": summary, "runs": runs,
            "samples": r.samples, "steps": r.steps or STEPS}


def crosslingual_report(res: dict):
    langs = res["languages"]

    def cells(mean, std, seeds):
        return " | ".join(f"{m:.3f} ± {d:.3f}" if seeds > 1 else f"{m:.3f}" for m, d in zip(mean, std))

    lines = ["| model | seeds | " + " | ".join(f"{lang}{' (pivot)' if lang == 'aa' else ''}" for lang in langs)
             + " | bb, cc: answer right in aa or the language asked | translation aa->bb / aa->cc |",
             "|---|---:|" + "---:|" * len(langs) + "---|---:|"]
    for label, s in res["summary"].items():
        n = len(s["seeds"])
        name = label if label in CONDITIONS or label in PROBES else f"{label}, transfer data"
        either = " / ".join(f"{m:.3f}" + (f" ± {d:.3f}" if n > 1 else "")
                            for m, d in zip(s["any_language_mean"][1:], s["any_language_std"][1:]))
        lines.append(f"| {name} | {n} | {cells(s['mean'], s['std'], n)} | {either} | "
                     f"{s['translation'][0]:.2f} / {s['translation'][1]:.2f} |")
    lines.append("| chance | | " + " | ".join(f"{res['chance'][lang]:.3f}" for lang in langs) + " | | |")
    table = "\n".join(lines) + (
        f"\n\nEvery model trained {res.get('steps', 1000)} steps. "
        f"Question accuracy (colour, shape, count, position, averaged) about held-out scenes, {res['samples']} "
        "questions per kind and language: closed-set among the answer words of the language asked (the answer "
        "must be right and in that language), mean ± std over training seeds. The next column scores the same "
        "questions among those words and aa's, by the concept of the chosen word: the answer right in either "
        "language. Translation: greedy exact match of whole sentences, "
        f"{res['samples']} per direction.")

    def plot(ax):
        labels = list(res["summary"])
        width = 0.8 / len(labels)
        x = np.arange(len(langs))
        for i, label in enumerate(labels):
            s = res["summary"][label]
            ax.bar(x + i * width, s["mean"], width, yerr=s["std"], label=label, capsize=2)
        ax.plot(x + 0.4 - width / 2, [res["chance"][lang] for lang in langs], "k_", markersize=30, label="chance")
        ax.set_xticks(x + 0.4 - width / 2, [f"{lang}{' (pivot)' if lang == 'aa' else ''}" for lang in langs])
        ax.set_ylabel("question accuracy (language asked)")
        ax.set_ylim(0, 1.3)  # room above the bars for the legend
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.legend(fontsize=6, loc="upper center", ncol=2)

    return table, plot


EXPERIMENTS = {"crosslingual": (crosslingual, crosslingual_report)}
