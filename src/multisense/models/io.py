"""The one save/load of multisense: `config.json` + `model.safetensors` of the trainable weights.

A *model checkpoint*: what `save_pretrained` writes and `from_pretrained` reads. Frozen
backbones are not copied into it; their identity (where they load from, their type and a
fingerprint of their weights) is recorded so a checkpoint is never silently applied to another
backbone. Each file is written atomically (`multisense.files`). Nothing is unpickled. A
*training checkpoint* (`train.checkpoint`) holds a model checkpoint's weights plus the optimiser
state needed to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# The precisions a backbone may be reloaded in: a checkpoint records a fingerprint for each, so
# the same LM loaded with `dtype=torch.bfloat16` is recognised, and another LM is not.
FINGERPRINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fingerprint(module: nn.Module, dtype: torch.dtype = torch.float32) -> str:
    """A cheap identity of a module's weights: every name and shape, plus up to 256 evenly spaced
    values of each tensor (hashing all of a 7B model's bytes would take minutes), floating values
    rounded to `dtype`. Rounding the recorded fp32 weights to bf16 gives exactly what
    `from_pretrained(dtype=torch.bfloat16)` loads, so the fingerprint does not depend on the
    precision a backbone is loaded in, only on its weights."""
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)]
        if sample.is_floating_point():
            sample = sample.to(dtype)
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprints(module: nn.Module) -> dict[str, str]:
    """`fingerprint` at every precision of FINGERPRINT_DTYPES, as a checkpoint records them."""
    return {name: fingerprint(module, dtype) for name, dtype in FINGERPRINT_DTYPES.items()}


def same_weights(module: nn.Module, recorded: dict[str, str]) -> bool:
    """Whether `module` holds the weights `recorded` (by `fingerprints`) were taken of, in whatever
    precision it was loaded: compared at its lowest floating precision."""
    dtypes = {p.dtype for p in module.state_dict().values() if p.is_floating_point()}
    name = "float16" if torch.float16 in dtypes else "bfloat16" if torch.bfloat16 in dtypes else "float32"
    return recorded.get(name) == fingerprint(module, FINGERPRINT_DTYPES[name])


def write_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """The weights file of every checkpoint, model or training: safetensors, CPU, contiguous."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_file(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_checkpoint(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                    tokenizer=None) -> Path:
    """Write config.json and model.safetensors into `directory` (created if missing), and the
    tokenizer's files beside them when one is given (`saved_tokenizer` reads them back)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # weights first: a directory whose config.json exists always has matching weights beside it
    write_weights(directory / WEIGHTS_NAME, tensors)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_file(directory / CONFIG_NAME, lambda p: p.write_text(text))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: no {name}; expected a directory written by save_pretrained")
    config = json.loads((directory / CONFIG_NAME).read_text())
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"{directory / WEIGHTS_NAME}: corrupt or truncated safetensors file ({err})") from err
    return config, tensors


def read_checkpoint(directory: str | os.PathLike, family: str, config_class, overrides: dict, *,
                    may_change: tuple[str, ...] = ()) -> tuple[object, dict[str, torch.Tensor]]:
    """(config, weights) of a `family` checkpoint, the config with `overrides` applied: only those
    in `may_change`, which change how the trained weights are used, not the weights."""
    values, tensors = load_checkpoint(directory)
    found = values.pop("family", None) or values.pop("architecture", None)  # Flamingo's before the registry
    if found != family:
        raise ValueError(f"{directory}: a {found} checkpoint, not {family}")
    fixed = sorted(set(overrides) - set(may_change))
    if fixed:
        allowed = f"only {', '.join(may_change)} may be overridden" if may_change else "none may be overridden"
        raise ValueError(f"from_pretrained: {fixed} would change the trained weights; {allowed}")
    return config_class.from_dict({**values, **overrides}), tensors


def saved_tokenizer(directory: str | os.PathLike):
    """The tokenizer save_pretrained wrote beside the weights, or None."""
    if not (Path(directory) / "tokenizer_config.json").is_file():
        return None
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory)


def check_fits(expected: dict[str, torch.Size], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Require exactly the names of `expected`, with the same shapes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: checkpoint does not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    for name, t in tensors.items():
        if tuple(expected[name]) != tuple(t.shape):
            raise ValueError(f"{where}: {name} has shape {list(t.shape)} in the checkpoint, "
                             f"{list(expected[name])} in the model")


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], expected: list[str], where: str) -> None:
    """Copy `tensors` into `module`, requiring exactly the names in `expected`."""
    own = module.state_dict()
    check_fits({name: own[name].shape for name in expected}, tensors, where)
    module.load_state_dict(tensors, strict=False)


# ---------------------------------------------------------------------------------- backbones
# Every family keeps its frozen backbones out of its checkpoint and records who they are.


def local_path(name_or_path: str) -> str:
    """A backbone's directory as an absolute path, so a checkpoint loads from any working
    directory; names that are not local directories are kept as given."""
    return str(Path(name_or_path).resolve()) if name_or_path and Path(name_or_path).is_dir() else name_or_path or ""


def _dtype_name(module: nn.Module) -> str | None:
    floating = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    return str(floating).removeprefix("torch.") if floating is not None else None


def lm_identity(lm: nn.Module) -> dict:
    """What a checkpoint records of its frozen language model: where it loads from, and how it
    ran (precision, attention implementation), so a reload computes what was trained."""
    return {"name_or_path": local_path(getattr(lm.config, "_name_or_path", "")), "model_type": lm.config.model_type,
            "class": type(lm).__name__, "fingerprint": fingerprints(lm), "dtype": _dtype_name(lm),
            "attn_implementation": getattr(lm.config, "_attn_implementation", None)}


def vision_identity(encoder: nn.Module) -> dict:
    """What a checkpoint records of its frozen vision encoder (wrapped by `encoders.as_encoder`)."""
    hf = getattr(encoder, "model", None)
    config = getattr(hf, "config", None)
    return {"name_or_path": local_path(getattr(config, "_name_or_path", "")),
            "class": type(hf if hf is not None else encoder).__name__, "fingerprint": fingerprints(encoder),
            "dtype": _dtype_name(encoder), "attn_implementation": getattr(config, "_attn_implementation", None)}


def loading_options(identity: dict, dtype: torch.dtype | None) -> dict:
    """`from_pretrained` keywords that rebuild a recorded backbone as it ran: `dtype` if given,
    else its recorded precision, and its attention implementation."""
    dtype = dtype if dtype is not None else FINGERPRINT_DTYPES.get(identity.get("dtype") or "")
    options = {"dtype": dtype} if dtype is not None else {}
    if identity.get("attn_implementation"):
        options["attn_implementation"] = identity["attn_implementation"]
    return options


def backbone_class(identity: dict, name: str, auto=None) -> type:
    """The transformers class a checkpoint recorded for a frozen backbone, once its directory is
    known to exist here."""
    import transformers

    path = identity.get("name_or_path")
    if not path or not Path(path).is_dir():
        raise ValueError(f"{name}: the checkpoint records {path!r}, which is not a directory here; "
                         f"pass {name}= explicitly")
    cls = getattr(transformers, identity.get("class", ""), None) or auto
    if cls is None:
        raise ValueError(f"{name}: unknown class {identity.get('class')!r}; pass {name}= explicitly")
    return cls


def load_backbones(lm_ident: dict, vision_ident: dict, *, lm: nn.Module | None = None,
                   vision_encoder: nn.Module | None = None, check: bool = True, dtype: torch.dtype | None = None):
    """The frozen backbones a checkpoint records, loaded from their local directories unless
    given, in `dtype` or the precision they ran in; (lm, vision encoder wrapped by as_encoder or
    None). A backbone whose weights differ from the recorded ones is an error (the same weights
    in another precision are not)."""
    import transformers

    from ..encoders import as_encoder, load_vision_encoder

    if lm is None:
        lm = backbone_class(lm_ident, "lm", transformers.AutoModelForCausalLM).from_pretrained(
            lm_ident["name_or_path"], **loading_options(lm_ident, dtype))
    if vision_encoder is None and vision_ident:
        vision_encoder = load_vision_encoder(vision_ident["name_or_path"], backbone_class(vision_ident, "vision_encoder"),
                                             **loading_options(vision_ident, dtype))
    if vision_encoder is not None:
        vision_encoder = as_encoder(vision_encoder)
    if check:
        for name, module, ident in (("lm", lm, lm_ident), ("vision_encoder", vision_encoder, vision_ident)):
            if module is not None and ident.get("fingerprint") and not same_weights(module, ident["fingerprint"]):
                raise ValueError(f"{name}: its weights differ from those this checkpoint was trained on "
                                 f"({ident.get('name_or_path') or 'unnamed'}); pass check_backbones=False "
                                 "to load anyway")
    return lm, vision_encoder


def attach_identities(config, lm: nn.Module, vision_encoder: nn.Module | None, *, tokenizer=None,
                      media_token_id: int | None = None):
    """What every family's `from_lm` does before building: the media marker's id (with a
    tokenizer and no id, an `<image>` special token is added to it), and the identities of the
    frozen backbones in `config` (fields media_token_id, lm, vision, dim_media). Returns the
    vision encoder wrapped by `encoders.as_encoder` (or None)."""
    from ..encoders import as_encoder
    from ..tokens import MEDIA_MARKER

    if media_token_id is None and config.media_token_id is None and tokenizer is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": [MEDIA_MARKER]})
        media_token_id = tokenizer.convert_tokens_to_ids(MEDIA_MARKER)
    if media_token_id is not None:
        config.media_token_id = media_token_id
    config.lm = lm_identity(lm)
    if vision_encoder is not None:
        vision_encoder = as_encoder(vision_encoder, config.dim_media)
        config.vision = vision_identity(vision_encoder)
    return vision_encoder
