"""Training checkpoints: what resumes a run exactly, never loaded half-way.

A *training checkpoint* is a model checkpoint's weights plus the state needed to resume; a
*model checkpoint* (`models.io`, `save_pretrained`) is what a finished run leaves in model/.
Both write their weights with `models.io.write_weights`. A training checkpoint is a directory
`step-000100/`:

    model.safetensors   trainable weights (the frozen backbones are not copied)
    state.pt            optimiser and scheduler state and torch RNG states, read back with
                        `torch.load(weights_only=True)`: tensors and plain containers, no pickle
    checkpoint.json     step, data position (the trainer's: the step, or every process's
                        loader epoch and position), Python/numpy RNG states, the run config,
                        and the size and sha256 of both files above

It is written whole by `files.atomic_directory` (a temporary folder, flushed, then renamed into
place), so a run killed at any moment leaves either a complete checkpoint or none. Loading
checks every size and hash first and names the file that does not match: a corrupt or
truncated checkpoint is rejected before anything is copied into the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..files import atomic_directory
from ..models.io import write_weights

MANIFEST = "checkpoint.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
_NAME = re.compile(r"^step-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """RNG states: Python and numpy as JSON, torch (CPU and every CUDA device) as tensors."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(state), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save(directory: str | os.PathLike, *, step: int, weights: dict[str, torch.Tensor], state: dict,
         info: dict, keep_last: int | None = None) -> Path:
    """Write checkpoint `directory/step-{step}` atomically (a re-saved step, after a resume,
    replaces it whole); keep only the newest `keep_last`."""
    root = Path(directory)
    final = root / f"step-{step:06d}"

    def build(tmp: Path) -> None:
        write_weights(tmp / WEIGHTS, weights)
        torch.save(state, tmp / STATE)
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                 for name in (WEIGHTS, STATE)}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, **info, "files": files}, indent=2) + "\n")

    atomic_directory(final, build)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Completed checkpoints under `directory`, oldest first (temporary directories ignored)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def verify(path: str | os.PathLike) -> dict:
    """Check a checkpoint's files against its manifest; returns the manifest or raises ValueError."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        expected = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path}: missing or unreadable {MANIFEST} ({err})") from err
    for name, meta in expected.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"checkpoint {path}: {name} is missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise ValueError(f"checkpoint {path}: {name} is truncated or altered "
                             f"({size} bytes, expected {meta['bytes']})")
        if _sha256(file) != meta["sha256"]:
            raise ValueError(f"checkpoint {path}: {name} is corrupt (sha256 does not match the manifest)")
    return manifest


def load(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(manifest, trainable weights, state) of a verified checkpoint; nothing is unpickled."""
    path = Path(path)
    manifest = verify(path)
    weights = load_file(str(path / WEIGHTS))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    return manifest, weights, state
