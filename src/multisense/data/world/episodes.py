"""Episodes of the touch world, generated once and cached on disk by seed.

Episode i of seed s is drawn from `numpy.random.default_rng([s, i])` and is the same on every
run: its material cycles through MATERIALS (balanced classes), the rest (start, slide direction
and length, press depth, timing, the camera's colour cast, sensor noise) comes from the rng.
One safetensors file per episode (arrays; the EpisodeSpec as JSON in its metadata), under
`<cache>/touch-world/<VERSION>/seed-<s>-<seconds>s/`; a changed generator gets a new VERSION, so an old
cache is never read for a new generator. Files are written whole or not at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...files import atomic_file
from .materials import NAMES

VERSION = "v3"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTISENSE_CACHE") or Path.home() / ".cache" / "multisense")


def episode_dir(seed: int, cache_dir: str | os.PathLike | None = None, seconds: float = 3.0) -> Path:
    """Where episodes of (seed, seconds) are cached: a 1 s episode i is not a 3 s one."""
    return Path(cache_dir or default_cache_dir()) / "touch-world" / VERSION / f"seed-{seed}-{seconds:g}s"


def episode_spec(seed: int, index: int, seconds: float = 3.0):
    from .sim import EpisodeSpec

    rng = np.random.default_rng([seed, index])
    return EpisodeSpec.draw(rng, seconds=seconds, material_name=NAMES[index % len(NAMES)]), rng


_WORLDS: dict = {}


def simulate(seed: int, index: int, seconds: float = 3.0) -> tuple[dict[str, np.ndarray], dict]:
    """Episode `index` of `seed`, simulated now (no cache): (arrays, spec as a dict)."""
    from dataclasses import asdict

    from .sim import World

    spec, rng = episode_spec(seed, index, seconds)
    if spec.material not in _WORLDS:  # one compiled scene per material and process
        _WORLDS[spec.material] = World(spec.material)
    return _WORLDS[spec.material].run(spec, rng), asdict(spec)


def _write(path: Path, arrays: dict[str, np.ndarray], spec: dict) -> None:
    from safetensors.numpy import save_file

    meta = {"spec": json.dumps(spec), "version": VERSION}
    atomic_file(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), meta))


def _one(job: tuple[int, int, float, str]) -> str:
    seed, index, seconds, folder = job
    path = Path(folder) / f"{index:06d}.safetensors"
    if not path.exists():
        arrays, spec = simulate(seed, index, seconds)
        _write(path, arrays, spec)
    return str(path)


def generate(n: int, seed: int = 0, *, seconds: float = 3.0, cache_dir=None, workers: int = 2,
             log=None) -> list[Path]:
    """Paths of episodes 0 .. n-1 of `seed`, simulating only those not cached yet, in `workers`
    spawned processes (a script that calls this needs Python's `if __name__ == "__main__":` guard)."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of episodes, got {n}")
    folder = episode_dir(seed, cache_dir, seconds)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, seconds, str(folder)) for i in range(n)]
    todo = [j for j in jobs if not (folder / f"{j[1]:06d}.safetensors").exists()]
    if todo and log:
        log(f"touch world: simulating {len(todo)} of {n} episodes (seed {seed}) into {folder}")
    if len(todo) > 1 and workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_one, todo, chunksize=4):
                pass
    else:
        for job in todo:
            _one(job)
    return [folder / f"{i:06d}.safetensors" for i in range(n)]


def load_episode(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, spec) of a cached episode file (safetensors: no pickle)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: an episode of touch-world {meta.get('version')!r}, this generator is {VERSION!r}")
    return load_file(str(path)), json.loads(meta["spec"])
