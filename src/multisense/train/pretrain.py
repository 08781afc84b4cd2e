"""Embedded default backbones: a tiny GPT-2 and a tiny CLIP vision tower, pretrained from
scratch on scenes, and, on request (`model.lm=icl`), a tiny Llama that can look labels up in context.

Nothing is downloaded: the language model learns the scenes grammar from text-only lines, the
vision tower learns to name the object under each patch of rendered scenes, the in-context LM
learns from few-shot episodes in words, and all are saved in Hugging Face format (safetensors)
so that `from_pretrained(local_dir)` loads them like any checkpoint.

Shape letters: B batch, T tokens, P patches, H height, W width.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from multisense.data.images import to_pixel_values
from multisense.data.scenes import (
    COLOURS,
    MAX_OBJECTS,
    SHAPES,
    SceneObject,
    object_masks,
    order_line,
    render,
    sample_objects,
    text_corpus,
)
from multisense.data.tasks import VOCABULARY as TASK_VOCABULARY
from multisense.data.tasks import FewShotMapped
from multisense.data.tasks import text_corpus as task_text_corpus
from multisense.data.tokenizer import train_word_tokenizer
from multisense.files import give_default_mode
from multisense.tokens import IGNORE_INDEX
from multisense.train.loop import fit

# Bump on any change to what the backbones learn, so that stale caches are rebuilt.
VERSION = "backbones-v8"
# v4: 1500 -> 1000 steps; v5: 700 steps of 16 rows instead of 32, to pay for the vision tower's
# longer training within the demo's first-run budget (docs/results.md); v6: questions restate
# their object before the answer, and colours and shapes in order (`scenes.order_line`); v7: the
# vision tower also names each patch's shape; v8: the tower learns from its patch labels alone, no
# contrastive loss and no text tower (`_PatchHeads`), 4600 steps in the time of v7's 4000
LM_STEPS = 700
LM_BATCH = 16
ICL_VERSION = "icl-lm-v3"  # the in-context LM (`pretrain_icl_lm`), cached beside them; v2: the
# shared word tokenizer changed with backbones-v6 (new word order, "colours"); v3: the build checks
# that the lookup formed and otherwise retries with the next seed (`ensure_icl_lm`)
ICL_LM_STEPS = 1500
# Whether the lookup forms within ICL_LM_STEPS depends on the seed (initialisation and batch
# order; the episodes are the same): with the v6+ tokenizer, seed 0 had not formed it after 2700
# steps, seed 1 formed it by step 900 (but not on other episodes, drawn with seed 1: so the
# episodes no longer follow the seed; docs/results.md, session 9). So the build tries these seeds
# in turn, keeping the first whose 8-shot accuracy in words reaches ICL_MIN_ACCURACY (formed: 1.0;
# not formed, as icl-lm-v2: 0.20), and fails loudly if none does.
ICL_SEEDS = (1, 2, 3, 4)
ICL_MIN_ACCURACY = 0.6
ICL_CHECK_SHOTS = 8
BLOCK = 128  # tokens per packed LM pretraining row
# v5: 4000 steps of 16 scenes at lr 1e-3 instead of 600 of 64 at 2e-3. Shape is what the tower
# learns last; for the same compute, more and smaller steps learn it sooner (linear probe of an
# object's mean patch token: 0.59 after 600 x 64, 0.79 after 2000 x 32, 0.75 after 3000 x 16,
# 0.91 after 4000 x 16; docs/results.md). v8: 4600 steps, since a step without the text tower
# costs 15% less (object shape probe 0.987; v7's 4000 steps with the contrastive loss: 0.969).
VISION_STEPS = 4600
VISION_BATCH = 16
VISION_LR = 1e-3
SUMMARY_FILE = "train_summary.json"
# Steps averaged into the reported final loss, which is noisy step to step.
_LOSS_WINDOW = 50
_WARMUP_FRACTION = 0.05


def pretrain_corpus(n: int, seed: int) -> list[str]:
    """The LM's text: scenes lines (captions, Q&A) and task lines (`data.tasks`: few-shot episodes,
    comparisons, directions, digits and sums with the media described in words), half each, plus
    n / 5 lines of colours and shapes in order (`scenes.order_line`: they make the LM tell colour
    words apart)."""
    rng = np.random.default_rng(seed + 2)
    lines = text_corpus(n // 2, seed) + task_text_corpus(n - n // 2, seed + 1) + [order_line(rng) for _ in range(n // 5)]
    order = np.random.default_rng(seed).permutation(len(lines))
    return [lines[i] for i in order]


def _packed_blocks(tokenizer: PreTrainedTokenizerBase, lines: list[str], block: int) -> torch.Tensor:
    """Lines (each + eos) packed whole into rows of `block` tokens, right-padded: [N, block].
    Packing several short lines per row wastes little on padding; starting every row at a line
    start keeps what the LM sees at position 0 the same as in a prompt."""
    rows, row = [], []
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids = ids[: block - 1] + [tokenizer.eos_token_id]
        if len(row) + len(ids) > block:
            rows.append(row)
            row = []
        row = row + ids
    rows.append(row)
    out = torch.full((len(rows), block), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def _optimiser(model: torch.nn.Module, *, lr: float, steps: int):
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(
        optimiser, num_warmup_steps=max(1, int(_WARMUP_FRACTION * steps)), num_training_steps=steps
    )
    return optimiser, schedule


def _train(model, batches, *, steps: int, lr: float, desc: str, progress: bool) -> dict[str, float]:
    """Minimise `model(**batch).loss` over `steps` batches with the shared loop; returns a small summary."""
    optimiser, schedule = _optimiser(model, lr=lr, steps=steps)
    start = time.perf_counter()
    history = fit(model, batches, steps=steps, optimizer=optimiser, scheduler=schedule, max_grad_norm=1.0,
                  progress=progress, desc=desc)
    model.eval()
    return {
        "steps": steps,
        "final_loss": float(np.mean([r["loss"] for r in history[-_LOSS_WINDOW:]])),
        "seconds": time.perf_counter() - start,
    }


def _save(model, tokenizer: PreTrainedTokenizerBase | None, out_dir: Path, summary: dict[str, float]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return out_dir


# ---- language model -----------------------------------------------------------------------


def _lm_batches(tokenizer: PreTrainedTokenizerBase, lines: list[str], *, batch_size: int, seed: int):
    """Endless batches of packed rows (`_packed_blocks`) drawn at random; no loss on padding."""
    blocks = _packed_blocks(tokenizer, lines, BLOCK)
    attention = (blocks != tokenizer.pad_token_id).long()
    labels = blocks.masked_fill(attention == 0, IGNORE_INDEX)
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = torch.randint(len(blocks), (batch_size,), generator=generator)
        yield {"input_ids": blocks[rows], "attention_mask": attention[rows], "labels": labels[rows]}


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def pretrain_lm(
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    steps: int = LM_STEPS,
    batch_size: int = LM_BATCH,
    lr: float = 2e-3,
    corpus_lines: int = 60_000,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a tiny GPT-2 from scratch on `pretrain_corpus`, packed into rows of BLOCK tokens."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=4,
        n_embd=128,
        n_head=4,
        n_positions=256,  # few-shot episodes of 8 shots reach ~100 tokens
        # The corpus is large and noiseless; dropout would only slow the short training down.
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
        **_special_tokens(tokenizer),
    )
    model = GPT2LMHeadModel(config)
    batches = _lm_batches(tokenizer, pretrain_corpus(corpus_lines, seed), batch_size=batch_size, seed=seed)
    summary = _train(model, batches, steps=steps, lr=lr, desc="pretraining LM", progress=progress)
    return _save(model, tokenizer, Path(out_dir), summary)


def pretrain_icl_lm(
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    steps: int = ICL_LM_STEPS,
    batch_size: int = 128,
    lr: float = 1e-3,
    corpus_lines: int = 60_000,
    attributes: tuple[str, ...] = ("shape",),
    seed: int = 0,
    corpus_seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a tiny Llama (2 layers x 64, rotary positions) on long `fewshot_mapped` episodes in
    words only, one attribute per line in turn, until it has an induction head: a lookup "after
    the token seen before, the token that followed it", keyed on the query, which in-context
    learning needs and the default LM never forms in its short pretraining.

    On shapes it forms between steps 750 and 1000 at lr 1e-3 for some seeds (in words, with
    demonstrations drawn at random: 0.09 / 0.41 / 0.68 / 0.88 at 0 / 2 / 4 / 8 shots, chance
    0.125), and not within 2700 steps for
    others. At lr 2e-3, 3e-3 and 1e-2, and within 1500 steps on colours (6 classes) or on shapes
    and colours mixed, it stops at copying *some* label present in the context (docs/results.md,
    sessions 5, 6 and 9). It knows nothing but episodes. `seed` sets the initialisation and the
    batch order, `corpus_seed` the episodes. The summary records its closed-set
    accuracy in words at ICL_CHECK_SHOTS shots (`in_words_accuracy`), which `ensure_icl_lm` checks.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **_special_tokens(tokenizer),
    )
    model = LlamaForCausalLM(config)
    tasks, rng = [FewShotMapped(attribute=a) for a in attributes], np.random.default_rng(corpus_seed)
    lines = [tasks[i % len(tasks)].text_line(rng) for i in range(corpus_lines)]
    batches = _lm_batches(tokenizer, lines, batch_size=batch_size, seed=seed)
    summary = _train(model, batches, steps=steps, lr=lr, desc="pretraining in-context LM", progress=progress)
    summary["seed"] = seed
    summary["in_words_accuracy"] = in_words_accuracy(model, tokenizer, tasks[0])
    return _save(model, tokenizer, Path(out_dir), summary)


def in_words_accuracy(model, tokenizer: PreTrainedTokenizerBase, task: FewShotMapped, *, shots: int = ICL_CHECK_SHOTS,
                      samples: int = 100) -> float:
    """Closed-set accuracy of an LM alone on held-out `task` episodes in words (`eval.fewshot.InWords`),
    as `multisense eval --in-words` measures it: chance 1 / len(task.answers); at 8 shots an LM
    with the lookup reads 1.00, `icl-lm-v2` without it 0.20."""
    from multisense.eval.fewshot import InWords, evaluate  # eval builds on train; imported where used

    result = evaluate(model, tokenizer, InWords(task), shots=(shots,), seeds=(0,), samples=samples)
    return result["shots"][shots]["accuracy"]["mean"]


# ---- vision -------------------------------------------------------------------------------


def _vision_config(*, image_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=image_size, patch_size=4, hidden_size=128, intermediate_size=512,
                            num_hidden_layers=4, num_attention_heads=4)


# A patch belongs to the object that covers at least this share of its pixels, else to the background.
_PATCH_COVER = 0.25
# One class per (colour, shape, left-to-right rank) of the object under a patch, plus background.
_PATCH_CLASSES = len(COLOURS) * len(SHAPES) * MAX_OBJECTS + 1


def patch_labels(objects: tuple[SceneObject, ...], *, image_size: int, patch_size: int) -> np.ndarray:
    """Int64 [P] class per patch (P = (H / patch)^2, row-major): the object covering the patch as
    one (colour, shape, rank) class, or the last class for background."""
    side = image_size // patch_size
    labels = np.full(side * side, _PATCH_CLASSES - 1, dtype=np.int64)
    if not objects:
        return labels
    masks = object_masks(objects, image_size=image_size)[:, : side * patch_size, : side * patch_size]
    cover = masks.reshape(len(objects), side, patch_size, side, patch_size).mean(axis=(2, 4)).reshape(len(objects), -1)
    best = cover.argmax(0)  # [P] the object covering most of each patch
    hit = cover.max(0) >= _PATCH_COVER
    colours, shapes = list(COLOURS), list(SHAPES)
    classes = np.array([(colours.index(o.colour) * len(SHAPES) + shapes.index(o.shape)) * MAX_OBJECTS + rank
                        for rank, o in enumerate(objects)])
    labels[hit] = classes[best[hit]]
    return labels


def patch_shapes(labels: torch.Tensor) -> torch.Tensor:
    """`patch_labels` classes [..., P] -> the shape index of the object under each patch, or
    len(SHAPES) for background."""
    return torch.where(labels == _PATCH_CLASSES - 1, len(SHAPES), labels // MAX_OBJECTS % len(SHAPES))


class _PatchHeads(nn.Module):
    """Two dense losses on a vision tower's patch tokens: each token names the object under it
    as one (colour, shape, left-to-right rank) class, and separately its shape (or background).

    Why dense labels and no contrastive loss against captions: contrastive training alone gave a
    tiny tower whose patch tokens hardly say the shape (a linear probe read it at 0.41 per patch,
    chance 0.25) nor which object they belong to. The Flamingo resampler starts by averaging
    tokens, which keeps the binding of colour, shape and order only if each token holds the
    *conjunction*: hence one class per (colour, shape, rank). Shape is what the tower learns
    last and what the demo's captions failed on: the shape head raised the object-level shape
    probe from 0.88 to 0.97, and dropping the contrastive loss (and its text tower, 15% of a
    step) bought the steps that took it to 0.987 in the same time (docs/results.md, sessions 8
    and 9). Only the tower is saved; the heads are thrown away.
    """

    def __init__(self, tower: CLIPVisionModel):
        super().__init__()
        self.tower = tower
        width = tower.config.hidden_size
        self.head = nn.Linear(width, _PATCH_CLASSES)
        self.shape_head = nn.Linear(width, len(SHAPES) + 1)  # + background

    def forward(self, pixel_values: torch.Tensor, patch_labels: torch.Tensor) -> SimpleNamespace:
        tokens = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # [B, P, width], no class token
        loss = (nn.functional.cross_entropy(self.head(tokens).transpose(1, 2), patch_labels)
                + nn.functional.cross_entropy(self.shape_head(tokens).transpose(1, 2), patch_shapes(patch_labels)))
        return SimpleNamespace(loss=loss)


def _patch_batches(*, batch_size: int, image_size: int, patch_size: int, seed: int):
    """Endless batches of fresh scenes: pixel_values [B, 3, H, W] and `patch_labels` [B, P]."""
    rng = np.random.default_rng(seed)
    while True:
        objects = [sample_objects(rng, image_size=image_size) for _ in range(batch_size)]
        images = np.stack([render(scene, rng, image_size=image_size) for scene in objects])
        labels = np.stack([patch_labels(scene, image_size=image_size, patch_size=patch_size) for scene in objects])
        yield {"pixel_values": to_pixel_values(images), "patch_labels": torch.from_numpy(labels)}


def pretrain_vision(
    out_dir: str | Path,
    *,
    steps: int = VISION_STEPS,
    batch_size: int = VISION_BATCH,
    lr: float = VISION_LR,
    image_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a tiny CLIP vision tower (a ViT) from scratch on rendered scenes, every patch token
    naming the object under it (`_PatchHeads`); saved as a `CLIPVisionModel`."""
    torch.manual_seed(seed)
    tower = CLIPVisionModel(_vision_config(image_size=image_size))
    batches = _patch_batches(batch_size=batch_size, image_size=image_size, patch_size=tower.config.patch_size,
                             seed=seed)
    summary = _train(_PatchHeads(tower), batches, steps=steps, lr=lr, desc="pretraining vision", progress=progress)
    return _save(tower, None, Path(out_dir), summary)


# ---- cache --------------------------------------------------------------------------------


@dataclass
class Backbones:
    lm: Path
    vision: Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTISENSE_CACHE", Path.home() / ".cache" / "multisense"))


def _is_complete(backbones: Backbones) -> bool:
    weights = ("config.json", "model.safetensors")
    needed = [backbones.lm / "tokenizer.json"]
    needed += [folder / name for folder in (backbones.lm, backbones.vision) for name in weights]
    return all(path.is_file() for path in needed)


def _backbones_in(root: Path) -> Backbones:
    return Backbones(lm=root / "lm", vision=root / "vision")


def default_tokenizer() -> PreTrainedTokenizerBase:
    """The word tokenizer every embedded backbone shares (deterministic: rebuilt, not stored)."""
    return train_word_tokenizer(pretrain_corpus(4096, seed=0), extra_words=TASK_VOCABULARY)


def _build_atomically(root: Path, build) -> None:
    """`build(partial)` fills a temporary sibling folder, renamed to `root` only once complete, so
    an interrupted build never leaves a cache that looks usable."""
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
    try:
        build(partial)
        # mkdtemp's 0700 and safetensors' 0600 would keep the cache from anyone but its builder
        for path in [partial, *partial.rglob("*")]:
            give_default_mode(path)
        if root.exists():  # forced rebuild, or a damaged cache
            shutil.rmtree(root)
        os.replace(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def ensure_default_backbones(
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    lm_steps: int = LM_STEPS,
    vision_steps: int = VISION_STEPS,
) -> Backbones:
    """Return the cached default backbones, building them first if missing (or if `force`)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / VERSION
    if force or not _is_complete(_backbones_in(root)):
        def build(partial: Path) -> None:
            built = _backbones_in(partial)
            tokenizer = default_tokenizer()
            pretrain_lm(tokenizer, built.lm, steps=lm_steps, seed=0, progress=progress)
            pretrain_vision(built.vision, steps=vision_steps, seed=0, progress=progress)

        _build_atomically(root, build)
    return _backbones_in(root)


def ensure_icl_lm(cache_dir: str | Path | None = None, *, progress: bool = True, force: bool = False,
                  steps: int = ICL_LM_STEPS, seeds: tuple[int, ...] = ICL_SEEDS,
                  min_accuracy: float = ICL_MIN_ACCURACY) -> Path:
    """Return the cached in-context LM (`pretrain_icl_lm`), building it first if missing: about
    6 minutes on 2 cores per seed tried, paid only by runs that ask for `model.lm=icl`. It has its
    own version, so rebuilding the default backbones leaves it alone.

    A build whose lookup did not form (8-shot accuracy in words below `min_accuracy`) is thrown
    away and the next seed tried; if none forms it, the error names every seed's accuracy and
    nothing is cached, so no run trains on an LM that cannot learn in context."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / ICL_VERSION
    weights = [root / "lm" / name for name in ("config.json", "model.safetensors", "tokenizer.json")]

    def build(partial: Path) -> None:
        tokenizer, tried = default_tokenizer(), {}
        for seed in seeds:
            out = pretrain_icl_lm(tokenizer, partial / "lm", steps=steps, seed=seed, progress=progress)
            tried[seed] = json.loads((out / SUMMARY_FILE).read_text())["in_words_accuracy"]
            if tried[seed] >= min_accuracy:
                return
            warnings.warn(f"in-context LM, seed {seed}: {ICL_CHECK_SHOTS}-shot accuracy in words {tried[seed]:.2f} "
                          f"< {min_accuracy}: the lookup did not form; trying the next seed", stacklevel=2)
        raise RuntimeError(f"the in-context LM formed no lookup with any seed: {ICL_CHECK_SHOTS}-shot accuracy in "
                           f"words per seed {tried}, expected >= {min_accuracy}; nothing was cached")

    if force or not all(path.is_file() for path in weights):
        _build_atomically(root, build)
    return root / "lm"


def resolve_backbone_dirs(lm: str, vision: str | None = None, *, cache_dir: str | Path | None = None,
                          progress: bool = True) -> tuple[str, str | None]:
    """Local directories for `model.lm` and `model.vision`: "default" names the embedded tiny
    GPT-2 and CLIP tower, "icl" (LM only) the embedded in-context Llama, anything else is a
    directory already (vision None: the LM alone). Embedded backbones are built into the cache on
    first use."""
    if vision == "icl":
        raise ValueError('model.vision: "icl" names a language model; expected "default" or a directory')
    # Checked before anything builds; transformers would take a missing path for a Hub repo id
    # and fail with "Repo id must be in the form ...".
    if lm not in ("default", "icl") and not os.path.isdir(lm):
        raise FileNotFoundError(f"model.lm: expected a local directory, 'default' or 'icl', got {lm!r} "
                                "(no such directory)")
    if vision not in (None, "default") and not os.path.isdir(vision):
        raise FileNotFoundError(f"model.vision: expected a local directory or 'default', got {vision!r} "
                                "(no such directory)")
    if "default" in (lm, vision):
        defaults = ensure_default_backbones(cache_dir, progress=progress)
        lm = str(defaults.lm) if lm == "default" else lm
        vision = str(defaults.vision) if vision == "default" else vision
    if lm == "icl":
        lm = str(ensure_icl_lm(cache_dir, progress=progress))
    return lm, vision
