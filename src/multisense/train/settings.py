"""The typed settings of `multisense train`: one dataclass per section (model, data, optim,
train, check) and `validate`, which checks every value before anything loads or is written
(errors name the dotted key: `train.precision: expected ...`). Each family's own section
validates itself (`FamilyConfig.validate`); what is checked here is the run around it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import backbones
from ..config import check_choice, check_number
from ..data.world.tasks import LM_TASKS, WorldData
from ..data.world.tasks import SENSORS as WORLD_SENSORS
from ..data.world.tasks import TASKS as WORLD_TASKS
from ..models.flamingo import FlamingoConfig
from ..models.fusion import FusionConfig
from ..models.llava import LlavaConfig
from ..models.pali import PaLIConfig
from ..models.registry import FAMILIES, get_family
from . import checkpoint as ckpt
from . import distributed


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
