"""`multisense train`: a model of any registered family (`model.family`: flamingo, llava, fusion, pali)
trained from a typed config, on one CPU or under torchrun.

    multisense train --config video.yaml optim.lr=3e-4 train.steps=2000
    torchrun --nproc_per_node 2 -m multisense train --config video.yaml

The run directory holds `checkpoints/step-*/` (atomic, exact resume), `logs/metrics.csv` and
TensorBoard event files, `config.yaml` (the resolved config) and, at the end, `model/`
(save_pretrained). A run started again with the same `out_dir` resumes from its newest
checkpoint (`train.resume: auto`): weights, optimiser, schedule, step, data position and RNG.
Every config value is checked (`validate`) before anything loads or is written.

Data for the language-model families are a procedural task (`data.task`, a name from `multisense.data.tasks.TASKS`) or files
(`data.paths`: JSONL and tar shards, `multisense.data.loaders`). Sample i of a task is drawn
from its own seeded generator, so the data position is just the step, and process r of N
takes samples r, r+N, ... of each global batch: 2 processes of batch b see exactly the samples
of 1 process of batch 2b. With files, process r reads the records numbered r modulo N; each
process's loader has its own (epoch, position), and a checkpoint holds every process's, so a
resume continues at the next record of each, whatever bad records were skipped. The fusion
family trains on touch-world episodes (`data.world`, simulated once and cached) to answer
`data.task` (material, slipping) from `model.fusion.sensors`; its data position is the step too.
With `model.fusion.lm` a frozen LM answers instead, in words, through gated cross-attention over
the fused latents (also `data.task=contact`: is the finger touching / slipping / lifted off now);
the batches carry the questions as input_ids / attention_mask / labels (loss on the answer).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
import yaml
from torch import nn

from .. import backbones
from ..config import check_choice, check_number, load_config, to_dict
from ..data.collate import collate
from ..data.world.episodes import generate
from ..data.world.tasks import LM_TASKS, WorldData, answer_words, question_words, touch_batches, world_dataset
from ..data.world.tasks import SENSORS as WORLD_SENSORS
from ..data.world.tasks import TASKS as WORLD_TASKS
from ..encoders import load_vision_encoder
from ..lm.adapters import find_decoder_layers
from ..lm.inject import checkpoint_layers
from ..models.conventions import check_context
from ..models.flamingo import FlamingoConfig, FlamingoModel
from ..models.fusion import FusionConfig, FusionModel
from ..models.io import check_fits
from ..models.llava import LlavaConfig
from ..models.pali import PaLIConfig
from ..models.registry import FAMILIES, get_family
from ..models.scoring import is_encoder_decoder, label_layout
from . import checkpoint as ckpt
from . import distributed
from .distill import InWordsDistillation
from .logs import RunLogger
from .loop import fit, hf_progress
from .optim import build_optimizer, warmup_cosine


@dataclass
class ModelConfig:
    # a local Hugging Face causal-LM directory, "default": the embedded tiny GPT-2, or "icl": the
    # embedded tiny Llama with induction heads, for in-context tasks (multisense.backbones)
    lm: str = "default"
    vision: str = "default"  # a local vision-encoder directory, or "default": the embedded tiny CLIP tower
    tokenizer: str | None = None  # defaults to the LM's directory
    family: str = "flamingo"  # a registered family (multisense.models.FAMILIES); its own section below
    # a saved model (save_pretrained) of the same family whose trained weights start this run:
    # LLaVA's stage 2 (model.llava.lora_rank > 0) from its stage-1 projector; weights the saved
    # model lacks (the new LoRA adapters) start fresh
    init_from: str | None = None
    flamingo: FlamingoConfig = field(default_factory=FlamingoConfig)
    llava: LlavaConfig = field(default_factory=LlavaConfig)
    # the LM may be an encoder-decoder (T5, mT5) or a causal LM (the prefix-LM variant); all of it trains
    pali: PaLIConfig = field(default_factory=PaLIConfig)
    # the touch world's sensors by name (camera, touch, wrist, microphone) -> {"encoder": ...}
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def family_config(self):
        """The section of the chosen family (model.flamingo, model.llava, ...)."""
        return getattr(self, get_family(self.family).name)

    def on_world(self) -> bool:
        """Whether the family trains on the touch world's episodes (its class says so), not on
        text with images."""
        return bool(getattr(get_family(self.family).model_class, "trains_on_world", False))


@dataclass
class DataConfig:
    # a task name (multisense.data.tasks), or None with `paths`; model.family=fusion: a touch-world
    # task (multisense.data.world.TASKS: material, slipping; contact with model.fusion.lm) over the
    # episodes of `world`
    task: str | None = None
    task_args: dict = field(default_factory=dict)
    max_shots: int = 8  # demonstrations per training episode: 0..max_shots
    paths: list[str] = field(default_factory=list)  # JSONL files / tar shards (globs allowed)
    image_size: int = 32
    # Files only: each image scaled to [0, 1], then (x - mean) / std, per channel or for all three.
    # The defaults give [-1, 1], the range the procedural tasks render in (they ignore these);
    # set a pretrained encoder's own, e.g. CLIP's [0.481, 0.458, 0.408] / [0.269, 0.261, 0.276].
    mean: float | list[float] = 0.5
    std: float | list[float] = 0.5
    on_error: str = "skip"  # bad records in files: "skip" (reported) or "raise"
    batch_size: int = 8  # per process and micro-batch
    seed: int = 0
    calibration_samples: int = 256  # media statistics for model.flamingo.standardize_media
    world: WorldData = field(default_factory=WorldData)  # model.family=fusion only


@dataclass
class OptimConfig:
    lr: float = 1e-3
    gate_lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0


@dataclass
class RunConfig:
    steps: int = 1000
    grad_accum: int = 1
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "auto" (bf16 where the GPU supports it)
    activation_checkpointing: bool = False
    z_loss: float = 0.0
    # weight of the in-words distillation loss (train/distill.py); needs a task whose documents
    # carry `words` (the classification tasks: fewshot_shapes, fewshot_mapped, digits)
    distill_words: float = 0.0
    out_dir: str = "runs/train"
    save_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    resume: str = "auto"  # "auto" (newest checkpoint in out_dir, if any), "never", or a checkpoint path
    distributed: str = "ddp"  # under torchrun: "ddp" or "fsdp2"
    find_unused_parameters: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True


@dataclass
class CheckConfig:
    # A held-out check of the trained model before `model/` is written: closed-set accuracy on
    # data.task's evaluation episodes at each of `shots`, as `multisense eval` measures it. A run
    # that misses it says so and writes no model/ (its checkpoints stay): an in-context run can
    # end at chance with the same recipe (measured: docs/history.md). model.family=fusion: accuracy on
    # `samples` held-out touch-world episodes with the camera blocked, checked when min_accuracy is set.
    shots: list[int] = field(default_factory=list)  # shot counts to evaluate; empty: no check
    samples: int = 100  # episodes per shot count
    min_accuracy: float | None = None  # at the last shot count
    min_gain: float | None = None  # accuracy at the last shot count minus at the first
    # overrides of data.task_args for the check's episodes: a run trained with a training aid
    # (the video preset's `lead`) is checked on the task proper ({lead: 0.0})
    task_args: dict = field(default_factory=dict)


class CheckFailed(RuntimeError):
    """The trained model missed its check (`TrainConfig.check`); no model/ was written."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    check: CheckConfig = field(default_factory=CheckConfig)


PRESETS = Path(__file__).resolve().parent.parent / "presets"
PRECISIONS = ("fp32", "bf16", "auto")  # what fit() takes, and "auto" (_precision)
DEVICES = ("auto", "cpu", "cuda")  # what distributed.setup takes


def validate(cfg: TrainConfig) -> None:
    """Check every value before anything loads or is written: a typo costs no backbone load and
    leaves no run directory. Errors name the dotted key (`train.precision: expected ...`)."""
    from ..data.images import normalisation
    from ..data.loaders import ON_ERROR, expand_paths
    from ..data.tasks import get_task

    data, optim, run = cfg.data, cfg.optim, cfg.train
    check_choice(cfg.model.family, tuple(FAMILIES), "model.family")
    if not hasattr(cfg.model, cfg.model.family):
        raise ValueError(f"model.family: {cfg.model.family!r} is registered but `multisense train` cannot train it "
                         f"yet (it trains {[f for f in FAMILIES if hasattr(cfg.model, f)]})")
    # model.lm and model.vision are checked by backbones.resolve, before anything loads
    if cfg.model.init_from is not None:
        from ..models.registry import family_of

        if family_of(cfg.model.init_from) != cfg.model.family:
            raise ValueError(f"model.init_from: {cfg.model.init_from} is a {family_of(cfg.model.init_from)} model, "
                             f"model.family is {cfg.model.family}")
    if cfg.model.tokenizer is not None and not os.path.isdir(cfg.model.tokenizer):
        raise FileNotFoundError(f"model.tokenizer: expected a local directory, or null for model.lm's, got "
                                f"{cfg.model.tokenizer!r} (no such directory)")
    family = get_family(cfg.model.family)
    cfg.model.family_config().validate(where=f"model.{family.name}.")
    if getattr(family.model_class, "trains_on_world", False):
        return validate_world(cfg)
    if run.distill_words > 0 and not getattr(family.model_class, "distills_in_words", False):
        raise ValueError(f"train.distill_words: in-words distillation compares a frozen LM's hidden states at the "
                         f"media markers, which model.family={family.name} does not keep; set it to 0")
    standardize = getattr(cfg.model.family_config(), "standardize_media", False)

    if bool(data.task) == bool(data.paths):
        raise ValueError("data: set data.task (a task name) or data.paths (JSONL files / tar shards), "
                         + ("not both (data.task=null to train on files)" if data.task else "neither is set"))
    if data.task:
        try:  # building a task is cheap; it checks the name, task_args and image_size together
            get_task(data.task, image_size=data.image_size, **data.task_args)
        except (TypeError, ValueError) as err:
            raise ValueError(f"data.task={data.task!r}, data.task_args={data.task_args!r}, "
                             f"data.image_size={data.image_size}: {err}") from None
    else:
        expand_paths(data.paths, where="data.paths")
    if data.paths and run.distill_words > 0:
        raise ValueError("train.distill_words: needs data.task (documents from files carry no words)")
    check_choice(data.on_error, ON_ERROR, "data.on_error")
    check_number(data.image_size, "data.image_size", at_least=1)
    normalisation(data.mean, data.std, where="data.")
    check_number(data.batch_size, "data.batch_size", at_least=1)
    check_number(data.max_shots, "data.max_shots", at_least=0)
    if standardize:  # a standard deviation needs two samples
        check_number(data.calibration_samples, "data.calibration_samples", at_least=2)

    check_number(optim.lr, "optim.lr", above=0)
    if optim.gate_lr is not None:
        check_number(optim.gate_lr, "optim.gate_lr", above=0)
    check_number(optim.weight_decay, "optim.weight_decay", at_least=0)
    for i, beta in enumerate(optim.betas):
        check_number(beta, f"optim.betas[{i}]", at_least=0, below=1)
    check_number(optim.eps, "optim.eps", above=0)
    check_number(optim.warmup_steps, "optim.warmup_steps", at_least=0)
    check_number(optim.min_lr_ratio, "optim.min_lr_ratio", at_least=0, at_most=1)
    if optim.max_grad_norm is not None:
        check_number(optim.max_grad_norm, "optim.max_grad_norm", above=0)

    if cfg.check.shots:
        if not data.task:
            raise ValueError("check.shots: the check evaluates data.task's episodes; files have none (set check.shots=[])")
        for i, shots in enumerate(cfg.check.shots):
            check_number(shots, f"check.shots[{i}]", at_least=0)
        check_number(cfg.check.samples, "check.samples", at_least=1)
        if cfg.check.min_gain is not None and len(cfg.check.shots) < 2:
            raise ValueError("check.min_gain: needs at least two check.shots (the gain from the first to the last)")
        if cfg.check.min_accuracy is None and cfg.check.min_gain is None:
            raise ValueError("check.shots: set, but neither check.min_accuracy nor check.min_gain says what to pass")
        if cfg.check.min_accuracy is not None:
            check_number(cfg.check.min_accuracy, "check.min_accuracy", at_least=0, at_most=1)
        if cfg.check.min_gain is not None:
            check_number(cfg.check.min_gain, "check.min_gain", at_least=-1, at_most=1)
        task_args = {**data.task_args, **cfg.check.task_args}
        try:
            get_task(data.task, image_size=data.image_size, **task_args)
        except (TypeError, ValueError) as err:
            raise ValueError(f"check.task_args={cfg.check.task_args!r} (over data.task_args): {err}") from None

    for key in ("steps", "grad_accum", "save_every", "log_every"):
        check_number(getattr(run, key), f"train.{key}", at_least=1)
    check_number(run.keep_last, "train.keep_last", at_least=0)  # 0 keeps every checkpoint
    check_number(run.z_loss, "train.z_loss", at_least=0)
    check_number(run.distill_words, "train.distill_words", at_least=0)
    check_choice(run.precision, PRECISIONS, "train.precision")
    check_choice(run.distributed, distributed.STRATEGIES, "train.distributed")
    check_choice(run.device, DEVICES, "train.device")
    if run.resume not in ("auto", "never") and not (Path(run.resume) / ckpt.MANIFEST).is_file():
        raise ValueError(f"train.resume: expected 'auto', 'never' or a checkpoint directory (one holding "
                         f"{ckpt.MANIFEST}), got {run.resume!r}")
    if not run.out_dir:
        raise ValueError("train.out_dir: expected a directory, got an empty string")


def validate_world(cfg: TrainConfig) -> None:
    """`validate` for a family that trains on the touch world (fusion): its data, the world's
    sensors, and what a model without a language model cannot use."""
    data, model, run = cfg.data, cfg.model.fusion, cfg.train
    check_choice(data.task, WORLD_TASKS, "data.task")
    if data.paths:
        raise ValueError("data.paths: model.family=fusion trains on touch-world episodes (data.world), not files")
    if not model.sensors:
        raise ValueError("model.fusion.sensors: name at least one sensor, e.g. {touch: {encoder: tactile}} "
                         f"(the touch world has {list(WORLD_SENSORS)})")
    for name in model.sensors:  # each one's encoder: FusionConfig.validate
        if name not in WORLD_SENSORS:
            raise ValueError(f"model.fusion.sensors: no sensor named {name!r} in the touch world "
                             f"(it has {list(WORLD_SENSORS)})")
    if model.lm is None:
        if data.task in LM_TASKS:
            raise ValueError(f"data.task: {data.task!r} asks about one of several events, named in the question; a "
                             "classification head cannot read it: set model.fusion.lm (e.g. default)")
        if not model.class_names:
            raise ValueError("model.fusion.class_names: empty; the trainer fills it from data.task (leave it unset)")
    else:
        try:  # a name or a local directory, checked before anything loads
            backbones.resolve(model.lm)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"model.fusion.{err}") from None
    world = data.world
    check_number(world.episodes, "data.world.episodes", at_least=1)
    check_number(world.seconds, "data.world.seconds", above=0)
    check_number(world.occlusion, "data.world.occlusion", at_least=0, at_most=1)
    check_number(world.workers, "data.world.workers", at_least=1)
    check_number(data.batch_size, "data.batch_size", at_least=1)
    if cfg.check.min_accuracy is not None:  # checked on held-out episodes (eval.checks.touch_check)
        check_number(cfg.check.min_accuracy, "check.min_accuracy", at_least=0, at_most=1)
        check_number(cfg.check.samples, "check.samples", at_least=1)
    if cfg.check.min_gain is not None:
        raise ValueError("check.min_gain: a gain over shot counts; a fusion model is checked by check.min_accuracy "
                         "on held-out episodes")
    for key, why in (("check.shots", cfg.check.shots), ("train.distill_words", run.distill_words > 0),
                     ("train.activation_checkpointing", run.activation_checkpointing),
                     ("model.init_from", cfg.model.init_from is not None)):
        if why:
            raise ValueError(f"{key}: not used by model.family=fusion (it trains on touch-world episodes; "
                             "evaluate it with `multisense eval --model RUN/model`)")
    if run.distributed == "fsdp2":
        raise ValueError("train.distributed: fsdp2 shards a language model's layers; the fusion model is small, use ddp")
    for key in ("steps", "grad_accum", "save_every", "log_every"):
        check_number(getattr(run, key), f"train.{key}", at_least=1)
    check_number(run.keep_last, "train.keep_last", at_least=0)
    check_choice(run.precision, PRECISIONS, "train.precision")
    check_choice(run.device, DEVICES, "train.device")
    check_number(cfg.optim.lr, "optim.lr", above=0)
    if cfg.optim.gate_lr is not None:
        check_number(cfg.optim.gate_lr, "optim.gate_lr", above=0)
    if run.resume not in ("auto", "never") and not (Path(run.resume) / ckpt.MANIFEST).is_file():
        raise ValueError(f"train.resume: expected 'auto', 'never' or a checkpoint directory, got {run.resume!r}")
    if not run.out_dir:
        raise ValueError("train.out_dir: expected a directory, got an empty string")


def with_class_names(cfg: TrainConfig) -> TrainConfig:
    """model.fusion.class_names from data.task (the world's answers), unless set or the model
    answers through an LM."""
    from ..data.world.tasks import class_names

    fusion = cfg.model.fusion
    if not cfg.model.on_world() or fusion.class_names or fusion.lm or cfg.data.task not in WORLD_TASKS:
        return cfg
    fusion = dataclasses.replace(cfg.model.fusion, class_names=class_names(cfg.data.task))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fusion=fusion))


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset shipped in multisense/presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    raise FileNotFoundError(f"--config: no file {name_or_path!r} and no preset of that name (presets: {names})")


# ---------------------------------------------------------------------------------- model


def build_model(cfg: ModelConfig, *, progress: bool = True) -> tuple[nn.Module, object]:
    """Load the frozen backbones through from_pretrained and wrap them in model.family's class
    (trainable parts seeded); `progress`: transformers' loading bars."""
    with hf_progress(progress):
        return _build_model(cfg)


def _build_model(cfg: ModelConfig) -> tuple[nn.Module, object]:
    family = get_family(cfg.family)
    if cfg.on_world():
        return build_fusion(cfg)
    if not hasattr(family.model_class, "from_lm"):  # a family without backbones: built from its config
        return family.model_class(cfg.family_config()), None
    lm_dir, vision_dir = backbones.resolve(cfg.lm, cfg.vision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer or lm_dir)
    lm = load_lm(lm_dir, family)
    vision = load_vision_encoder(vision_dir)
    return family.model_class.from_lm(lm, vision, tokenizer=tokenizer, config=cfg.family_config()), tokenizer


def load_lm(lm_dir: str, family) -> nn.Module:
    """The LM of `lm_dir` through from_pretrained: a causal LM, or an encoder-decoder for a
    family (registry entry) whose class takes one (PaLI)."""
    config = transformers.AutoConfig.from_pretrained(lm_dir)
    if getattr(config, "is_encoder_decoder", False):
        if not getattr(family.model_class, "accepts_encoder_decoder", False):
            takers = [f.name for f in FAMILIES.values() if getattr(f.model_class, "accepts_encoder_decoder", False)]
            raise ValueError(f"model.lm: {lm_dir} is an encoder-decoder ({config.model_type}); model.family="
                             f"{family.name} needs a causal LM ({', '.join(takers)} take either)")
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(lm_dir)
    return transformers.AutoModelForCausalLM.from_pretrained(lm_dir)


def build_fusion(cfg: ModelConfig) -> tuple[FusionModel, object]:
    """The fusion model: its encoders built from model.fusion, and with model.fusion.lm the frozen
    LM loaded through from_pretrained, its tokenizer taught the touch world's question words."""
    from ..data.tokenizer import add_missing_words

    if cfg.fusion.lm is None:
        return FusionModel(cfg.fusion), None
    lm_dir, _ = backbones.resolve(cfg.fusion.lm)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer or lm_dir)
    add_missing_words(tokenizer, question_words())
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
    return FusionModel(cfg.fusion, lm=lm, tokenizer=tokenizer), tokenizer


def transformer_blocks(model: nn.Module, family_config) -> list[nn.Module]:
    """The LM's layers: the units of FSDP2 sharding and activation checkpointing (a family with
    more than one stack, PaLI's encoder-decoder, says which)."""
    if hasattr(model, "transformer_blocks"):
        return model.transformer_blocks()
    return list(find_decoder_layers(model.lm, family_config.decoder_layers_attr)[1])


def init_from(model: nn.Module, directory: str) -> list[str]:
    """Start `model`'s trainable weights from a saved model's; returns the names that start fresh."""
    from ..models.io import load_checkpoint

    values, tensors = load_checkpoint(directory)
    own = model.trainable_state_dict()
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"model.init_from: {directory} holds weights this model has not ({extra[:5]}); "
                         "is it built with the same family options?")
    check_fits({k: own[k].shape for k in tensors}, tensors, f"model.init_from {directory}")
    recorded = values.get("lm", {}).get("fingerprint")
    if recorded and recorded != model.config.lm.get("fingerprint"):
        raise ValueError(f"model.init_from: {directory} was trained on another language model "
                         f"({values['lm'].get('name_or_path')!r}) than model.lm")
    model.load_state_dict(tensors, strict=False)
    return sorted(set(own) - set(tensors))


def check_image_size(data: DataConfig, model: FlamingoModel, vision: str) -> None:
    """data.image_size must be the size the vision encoder was configured for (a Hugging Face
    encoder's `image_size`; an encoder without one is not checked): else the first batch fails
    inside the encoder, or position embeddings meet a grid they were not trained on."""
    config = getattr(getattr(getattr(model, "vision_encoder", None), "model", None), "config", None)
    config = getattr(config, "vision_config", config)  # a dual-tower config holds its tower's
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and size != data.image_size:
        raise ValueError(f"data.image_size: {data.image_size}, but the vision encoder (model.vision={vision!r}) "
                         f"takes {size}-pixel images; set data.image_size={size}")


# ---------------------------------------------------------------------------------- data


def file_loader(cfg: DataConfig, env: distributed.Env, at: dict | None = None):
    """This process's DocumentLoader of `data.paths`, at `at` ({"epoch", "position"}: one entry
    of a checkpoint's data_position) or at the first record."""
    from ..data.loaders import DocumentLoader

    at = at or {"epoch": 0, "position": 0}
    return DocumentLoader(cfg.paths, image_size=cfg.image_size, mean=cfg.mean, std=cfg.std, on_error=cfg.on_error,
                          rank=env.rank, world_size=env.world_size, start=at["position"], epoch=at["epoch"])


def loader_positions(loader, env: distributed.Env) -> list[dict]:
    """Every process's {"epoch", "position"}, in rank order (a collective: every rank calls it)."""
    mine = torch.tensor([loader.epoch, loader.position], dtype=torch.long, device=env.device)
    gathered = [mine]
    if env.world_size > 1:
        gathered = [torch.empty_like(mine) for _ in range(env.world_size)]
        torch.distributed.all_gather(gathered, mine)
    return [{"epoch": epoch, "position": position} for epoch, position in (t.tolist() for t in gathered)]


def resume_position(manifest: dict, where: str, env: distributed.Env) -> dict:
    """This process's {"epoch", "position"} in the files from a checkpoint's manifest."""
    saved = manifest.get("data_position")
    if not isinstance(saved, list):
        raise ValueError(f"checkpoint {where}: holds no loader positions for data.paths (data_position "
                         f"{saved!r}: a task run's step, or a checkpoint from before per-process positions); "
                         "start afresh in a new train.out_dir")
    if len(saved) != env.world_size:
        # Process r owns the records r modulo N: at another N the records are shared out anew
        # and no set of positions continues each process's share exactly.
        raise ValueError(f"checkpoint {where}: written by {len(saved)} processes, resumed by {env.world_size}; "
                         "with data.paths each process resumes at its own place in the files, so resume "
                         f"with the same number of processes (torchrun --nproc_per_node {len(saved)})")
    return saved[env.rank]


def micro_batches(cfg: DataConfig, tokenizer, *, env: distributed.Env, grad_accum: int,
                  start_step: int, words: bool = False, loader=None, seq2seq: bool = False,
                  samples: bool = False) -> Iterator[dict]:
    """This process's micro-batches from `start_step` on: grad_accum per optimiser step. With
    files, they come from `loader` (file_loader; a fresh one at the first record if None).
    A task gives interleaved training documents, or with `samples` episodes (prompt -> answer, for
    a family that reads a prompt and writes an answer: PaLI). `seq2seq`: laid out for an
    encoder-decoder (collate)."""
    b, world = cfg.batch_size, env.world_size
    per_step = b * world * grad_accum  # samples in one global optimiser step
    if cfg.task:
        from ..data.tasks import get_task

        task = get_task(cfg.task, image_size=cfg.image_size, **cfg.task_args)
        step = start_step
        while True:
            first = step * per_step
            mine = range(first + env.rank, first + per_step, world)  # strided: the union over ranks is the batch
            for j in range(grad_accum):
                docs = [_example(task, np.random.default_rng([cfg.seed, i]), cfg.max_shots, samples)
                        for i in mine[j * b:(j + 1) * b]]
                yield collate(docs, tokenizer, words=words, seq2seq=seq2seq)
            step += 1
    from ..data.loaders import batches

    # The loader, not the step, knows where this process is in the files (bad records skipped,
    # passes wrapped): the trainer saves its epoch and position with every checkpoint.
    yield from batches(loader if loader is not None else file_loader(cfg, env), tokenizer, b, epochs=None,
                       seq2seq=seq2seq)


def _example(task, rng: np.random.Generator, max_shots: int, sample: bool):
    """One training example of `task`: an interleaved document, or an episode of 0..max_shots
    demonstrations and a query whose answer is the target (`sample`)."""
    if sample:
        return task.episode(rng, int(rng.integers(0, max_shots + 1)), "train")
    return task.training_document(rng, max_shots=max_shots)


def calibration_batches(cfg: DataConfig, tokenizer, *, samples: int, device: torch.device) -> Iterator[dict]:
    """The first `samples` training samples, the same on every process and for any batch size
    (for calibrate_media)."""
    size = max(d for d in range(1, min(samples, 32) + 1) if samples % d == 0)
    single = distributed.Env(device=device)
    cfg = dataclasses.replace(cfg, batch_size=size)
    # Files: the training loader reports the bad records it meets in its first epoch; this loader
    # reads the same records, so it starts as if in a later epoch, which reports none again.
    loader = None if cfg.task else file_loader(cfg, single, {"epoch": 1, "position": 0})
    batches = micro_batches(cfg, tokenizer, env=single, grad_accum=1, start_step=0, loader=loader)
    for _ in range(samples // size):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}


def world_batches(cfg: TrainConfig, env: distributed.Env, start_step: int, tokenizer=None) -> Iterator[dict]:
    """This process's micro-batches of touch-world episodes (the fusion family): the main process
    simulates what is not cached, the others wait for it and read the cache. With a `tokenizer`
    (model.fusion.lm), the questions as token ids."""
    sensors = tuple(cfg.model.fusion.sensors)
    world = cfg.data.world
    if env.is_main:
        generate(world.episodes, world.seed, seconds=world.seconds, cache_dir=world.cache_dir, workers=world.workers,
                 log=print)
    distributed.barrier()
    dataset = world_dataset(cfg.data.world, task=cfg.data.task, sensors=sensors)
    return touch_batches(dataset, cfg.data.batch_size, cfg.data.seed, start_step=start_step, rank=env.rank,
                         world_size=env.world_size, grad_accum=cfg.train.grad_accum, tokenizer=tokenizer,
                         answers=cfg.model.fusion.answers)


# ---------------------------------------------------------------------------------- run


def _precision(value: str, device: torch.device) -> str:
    if value == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return value


def _full_state(model: FlamingoModel, optimizer) -> tuple[dict, dict]:
    """Trainable weights (with the buffers saved beside them) and optimiser state keyed by
    parameter name, whole and on the CPU (the optimiser state on rank 0 only, which saves it).
    Under FSDP2 only these are gathered from their shards, not the frozen backbones: they are
    most of the model and never saved."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    weights = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
               for k, v in model.trainable_state_dict().items()}
    optim = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return weights, optim


def _load_full_state(model, optimizer, weights: dict, optim: dict, *, where: str) -> None:
    """The inverse of _full_state, after checking the names and shapes of the weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    expected = {k: v.shape for k, v in model.trainable_state_dict().items()}
    check_fits(expected, weights, where)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True, strict=False))


# What a run leaves in its out_dir (module docstring): any of them means a run is there.
RUN_FILES = ("config.yaml", "checkpoints", "logs", "model")


def check_out_dir(run: RunConfig) -> None:
    """train.resume=never starts from scratch: refuse an out_dir that holds a run already, whose
    checkpoints (pruned by keep_last against the new ones), metrics and model would mix with it."""
    out = Path(run.out_dir)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if run.resume == "never" and held:
        raise FileExistsError(f"train.out_dir {out}: already holds a run ({', '.join(held)}) and train.resume=never "
                              "would mix a new run into it; choose a new train.out_dir, or train.resume=auto to "
                              "continue that run")


def train(cfg: TrainConfig, *, setup: Callable[[FlamingoModel], None] | None = None,
          measure: Callable[[int, FlamingoModel], dict | None] | None = None,
          check: Callable[[FlamingoModel, object, TrainConfig], dict] | None = None) -> dict:
    """Run (or resume) training as configured; returns a summary (steps, final loss, seconds, history).

    Hooks for experiments: `setup(model)` runs once before training (e.g. to re-initialise the
    gates), `measure(step, model)` at step 0 and after every step; what it returns joins the
    step's record (and the logs). `check(model, tokenizer, cfg)` measures the trained model
    against cfg.check (`multisense.eval.checks.held_out_check`; needed when check.shots is set):
    its report goes to out_dir/check.json, and a model that misses it raises CheckFailed
    instead of being written to model/.
    """
    cfg = with_class_names(cfg)
    validate(cfg)
    checked = bool(cfg.check.shots) or (cfg.model.on_world() and cfg.check.min_accuracy is not None)
    if checked and check is None:
        raise ValueError("check.shots: set, but train() was given no check function; pass "
                         "check=multisense.eval.checks.held_out_check (as `multisense train` does) or set check.shots=[]")
    check_out_dir(cfg.train)
    env = distributed.setup(cfg.train.device)
    run = cfg.train
    out = Path(run.out_dir)
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    model, tokenizer = build_model(cfg.model, progress=run.progress and env.is_main)
    check_image_size(cfg.data, model, cfg.model.vision)
    if cfg.model.on_world() and model.flamingo is not None:
        for word in answer_words(cfg.data.task):  # a frozen LM says only its own words (model.fusion.answers)
            model.lm_tokens(word)
    model.to(env.device)
    family_config = cfg.model.family_config()
    if getattr(family_config, "standardize_media", False):  # before a checkpoint, which holds the same statistics
        model.calibrate_media(calibration_batches(cfg.data, tokenizer, samples=cfg.data.calibration_samples,
                                                  device=env.device))
    if cfg.model.init_from is not None:
        fresh = init_from(model, cfg.model.init_from)
        if env.is_main and fresh:
            print(f"model.init_from: {len(fresh)} trainable tensors start fresh (not in {cfg.model.init_from}), "
                  f"e.g. {fresh[0]}")
    if setup is not None:
        setup(model)
    if run.activation_checkpointing:
        checkpoint_layers(transformer_blocks(model, family_config))
    # DDP/FSDP2 wrap what is trained: the model, or the distillation objective around it.
    # FSDP2 replaces the parameters with sharded ones: wrap first, then build the optimiser
    # (over the model's parameters: the distillation has none of its own).
    words = run.distill_words > 0
    units = transformer_blocks(model, family_config) if hasattr(model, "lm") else []
    trained = distributed.wrap(InWordsDistillation(model, run.distill_words) if words else model, env,
                               run.distributed, units=units, find_unused_parameters=run.find_unused_parameters)
    optimizer = build_optimizer(model, lr=cfg.optim.lr, gate_lr=cfg.optim.gate_lr,
                                weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps)
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.optim.warmup_steps, total_steps=run.steps,
                              min_lr_ratio=cfg.optim.min_lr_ratio)

    start_step, position = 0, None
    source = {"auto": ckpt.latest(out / "checkpoints"), "never": None}.get(run.resume, run.resume)
    if source is not None:
        manifest, weights, state = ckpt.load(source)
        if not cfg.data.task:
            position = resume_position(manifest, str(source), env)
        _load_full_state(model, optimizer, weights, state["optimizer"], where=str(source))
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(manifest["rng"], state["rng"])
        start_step = manifest["step"]

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
    logger = RunLogger(out / "logs", enabled=env.is_main, resume=start_step > 0 or (out / "logs").exists(),
                       resume_step=start_step)
    loader = None if cfg.data.task else file_loader(cfg.data, env, position)
    if cfg.model.on_world():
        batches = world_batches(cfg, env, start_step, tokenizer)
    else:
        batches = micro_batches(cfg.data, tokenizer, env=env, grad_accum=run.grad_accum, start_step=start_step,
                                words=words, loader=loader, seq2seq=is_encoder_decoder(model),
                                samples=getattr(model, "trains_on_samples", False))
        first = next(batches)  # what does not fit the LM is refused before a step is taken
        check_context(model, first, where=f"data ({cfg.data.task or 'data.paths'})")
        batches = itertools.chain([first], batches)

    final_weights: dict = {}

    def save(step: int) -> None:
        weights, optim_state = _full_state(model, optimizer)
        final_weights.update(weights)
        # a task's sample i is seeded, so its position is the step; files: every process's loader
        data_position = step if loader is None else loader_positions(loader, env)
        if env.is_main:
            logger.flush()  # the logs on disk reach at least as far as the checkpoint
            rng_plain, rng_tensors = ckpt.rng_state()
            ckpt.save(out / "checkpoints", step=step, weights=weights, keep_last=run.keep_last,
                      state={"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                             "rng": rng_tensors},
                      info={"data_position": data_position, "rng": rng_plain, "world_size": env.world_size,
                            "config": json.loads(json.dumps(to_dict(cfg)))})
        distributed.barrier()

    history: list[dict] = []

    def on_step(step: int) -> dict | None:
        return measure(step, model) if measure is not None else None

    def on_record(record: dict) -> None:
        step = record["step"]
        if step % run.log_every == 0 or step == run.steps:
            logger.log(step, record)
        # after the step's row is logged: a run killed after this checkpoint has every row up to it
        if step % run.save_every == 0 or step == run.steps:
            save(step)

    start = time.perf_counter()
    initial = measure(start_step, model) if measure is not None else None
    try:
        history = fit(trained, batches, steps=run.steps, optimizer=optimizer, scheduler=scheduler,
                      max_grad_norm=cfg.optim.max_grad_norm, grad_accum=run.grad_accum,
                      precision=_precision(run.precision, env.device), z_loss=run.z_loss,
                      start_step=start_step, progress=run.progress and env.is_main, desc="train",
                      on_step=on_step, on_record=on_record, layout=label_layout(model))
        report = None
        if checked:  # on every process (the same episodes): a sharded model evaluates together
            report = check(model, tokenizer, cfg)
            if env.is_main:
                (out / "check.json").write_text(json.dumps(report, indent=2) + "\n")
            if not report["passed"]:
                raise CheckFailed(f"the trained model missed its check ({'; '.join(report['reasons'])}), so no "
                                  f"model/ was written (report: {out / 'check.json'}; the last checkpoint is in "
                                  f"{out / 'checkpoints'}). Train again with another train.seed, or see "
                                  "docs/training.md, 'Checked runs'")
        if env.is_main:  # with the run's tokenizer, which every family keeps (from_lm) and saves
            model.save_pretrained(out / "model", state_dict=final_weights)
        # Every rank leaves together, so none tears its process group down while rank 0 still
        # writes model/ (an FSDP2 test run under heavy load once ended with a gloo rank aborting,
        # "terminate called without an active exception"). Only on success: after an error the
        # other ranks may never reach a barrier.
        distributed.barrier()
    finally:
        logger.close()
        distributed.teardown()
    seconds = time.perf_counter() - start
    return {"start_step": start_step, "steps": run.steps, "seconds": seconds,
            "final_loss": history[-1]["loss"] if history else None, "initial": initial, "check": report,
            "history": history}


def main(argv: list[str], *, check: Callable | None = None) -> int:
    """`multisense train`; `check` is the held-out check cfg.check uses (the CLI passes
    multisense.eval.checks.held_out_check)."""
    import argparse

    parser = argparse.ArgumentParser(prog="multisense train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a YAML file or the name of a shipped preset")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, resolve_preset(args.config) if args.config else None, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False))
        return 0
    summary = train(cfg, check=check)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0

