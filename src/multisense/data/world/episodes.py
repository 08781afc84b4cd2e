"""Episodes of the touch world, generated once and cached on disk by seed.

Episode i of seed s is drawn from `numpy.random.default_rng([s, i])` and is the same on every
run: its material cycles through MATERIALS (balanced classes), the rest (start, slide direction
and length, press depth, pull, timing, the camera's colour cast, sensor noise) comes from the rng.
One safetensors file per episode (arrays; the EpisodeSpec as JSON in its metadata), under
`<cache>/touch-world/<key>/seed-<s>-<seconds>s/`. The key is VERSION and a hash of everything
else an episode depends on (`parameters`: the materials and their height maps, each scene's
MuJoCo model, the simulation's constants, MuJoCo's version), so changing any of them, or the
generator's code (which bumps VERSION), never reads an old cache. Files are written whole or not
at all; a cached file that cannot be read, or holds arrays of the wrong shapes, is named in a
warning and simulated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...files import atomic_file
from . import materials

# The generator's revision: bump it when a change to the code (not to a parameter that
# `parameters` reads) changes the episodes.
VERSION = "v4"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTISENSE_CACHE") or Path.home() / ".cache" / "multisense")


@lru_cache(maxsize=None)
def _height_map_digest(name: str) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(h).tobytes() for h in materials.height_maps(name))).hexdigest()


def parameters() -> dict:
    """What an episode depends on besides its seed, index and seconds, as JSON-able values."""
    from dataclasses import asdict

    import mujoco

    from . import sim

    return {"generator": VERSION, "mujoco": mujoco.__version__,
            "materials": [asdict(m) for m in materials.MATERIALS],
            "height_maps": {m.name: _height_map_digest(m.name) for m in materials.MATERIALS},
            "scenes": {m.name: sim.scene_xml(m.relief, m.friction) for m in materials.MATERIALS},
            "constants": sim.constants()}


def cache_key() -> str:
    """VERSION and the hash of the canonical JSON of `parameters()`: the cache's folder name."""
    text = json.dumps(parameters(), sort_keys=True, separators=(",", ":"))
    return f"{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def episode_dir(seed: int, cache_dir: str | os.PathLike | None = None, seconds: float = 3.0) -> Path:
    """Where episodes of (seed, seconds) are cached: a 1 s episode i is not a 3 s one."""
    if not seconds > 0 or float(f"{seconds:g}") != seconds:
        raise ValueError(f"seconds: expected a positive duration of at most 6 significant digits (the cache "
                         f"names it so), got {seconds!r}")
    return Path(cache_dir or default_cache_dir()) / "touch-world" / cache_key() / f"seed-{seed}-{seconds:g}s"


def episode_spec(seed: int, index: int, seconds: float = 3.0):
    from .sim import EpisodeSpec

    rng = np.random.default_rng([seed, index])
    return EpisodeSpec.draw(rng, seconds=seconds, material_name=materials.NAMES[index % len(materials.NAMES)]), rng


_WORLDS: dict = {}


def simulate(seed: int, index: int, seconds: float = 3.0) -> tuple[dict[str, np.ndarray], dict]:
    """Episode `index` of `seed`, simulated now (no cache): (arrays, spec as a dict)."""
    from dataclasses import asdict

    from .sim import World

    spec, rng = episode_spec(seed, index, seconds)
    if spec.material not in _WORLDS:  # one compiled scene per material and process
        _WORLDS[spec.material] = World(spec.material)
    return _WORLDS[spec.material].run(spec, rng), asdict(spec)


def _write(path: Path, arrays: dict[str, np.ndarray], spec: dict, key: str) -> None:
    from safetensors.numpy import save_file

    meta = {"spec": json.dumps(spec), "key": key}
    # a temporary file in the same folder, then os.replace: a reader sees the old file or the new one
    atomic_file(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), meta))


_DTYPES = {np.uint8: "U8", np.int8: "I8", np.float32: "F32", np.bool_: "BOOL"}  # numpy -> safetensors' names


def _layout_problem(found: dict[str, tuple[tuple[int, ...], str]], seconds: float) -> str | None:
    """What is wrong with arrays of these (shape, safetensors dtype) for an episode of `seconds`, or None."""
    from .sim import stream_layout

    expected = {k: (shape, _DTYPES[dtype]) for k, (shape, dtype) in stream_layout(seconds).items()}
    if set(found) != set(expected):
        return f"holds arrays {sorted(found)}, expected {sorted(expected)}"
    wrong = [k for k in expected if found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        return f"array {k!r} is {found[k]}, expected {expected[k]} (shape, dtype) for {seconds:g} s"
    return None


def _problem(meta: dict, found: dict[str, tuple[tuple[int, ...], str]], key: str,
             seconds: float | None = None) -> str | None:
    """What keeps a cached file with this metadata and these arrays ((shape, safetensors dtype) by
    name) from being an episode of `seconds` (None: as its spec says) under `key`, or None."""
    if meta.get("key") != key:
        return f"has key {meta.get('key')!r}, its folder's is {key!r}"
    try:
        written = json.loads(meta["spec"])["seconds"]
    except (KeyError, TypeError, ValueError) as err:
        return f"has no readable spec in its metadata ({err!r})"
    if seconds is not None and written != seconds:
        return f"holds a {written!r} s episode, its folder is for {seconds:g} s"
    return _layout_problem(found, written)


def _header_problem(path: Path, seconds: float, key: str) -> str | None:
    """`_problem` of the cached file `path`, from its header alone: a truncated or overwritten file
    fails to open (safetensors checks that its header describes the whole file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        return f"cannot be read ({err})"
    return _problem(meta, found, key, seconds)


def _one(job: tuple[int, int, float, str, str]) -> str:
    seed, index, seconds, folder, key = job
    path = Path(folder) / f"{index:06d}.safetensors"
    arrays, spec = simulate(seed, index, seconds)
    _write(path, arrays, spec, key)
    return str(path)


def _resimulate_warning(path: Path, problem: str) -> None:
    warnings.warn(f"touch world: the cached episode {path} {problem}; simulating it again", stacklevel=3)


def generate(n: int, seed: int = 0, *, seconds: float = 3.0, cache_dir=None, workers: int = 2,
             log=None) -> list[Path]:
    """Paths of episodes 0 .. n-1 of `seed`, simulating only those not cached yet (or cached
    unreadable, with a warning), in `workers` spawned processes (a script that calls this needs
    Python's `if __name__ == "__main__":` guard)."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of episodes, got {n}")
    folder = episode_dir(seed, cache_dir, seconds)
    folder.mkdir(parents=True, exist_ok=True)
    key, todo = folder.parent.name, []
    for i in range(n):
        path = folder / f"{i:06d}.safetensors"
        problem = _header_problem(path, seconds, key) if path.exists() else None
        if problem:
            _resimulate_warning(path, problem)
        if problem or not path.exists():
            todo.append((seed, i, seconds, str(folder), key))
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


_EPISODE_FILE = re.compile(r"seed-(-?\d+)-(.+)s/(\d+)\.safetensors")


def _whose(path: Path, key: str) -> tuple[int, int, float] | None:
    """(seed, index, seconds) of an episode file where the cache of `key` keeps it, else None."""
    match = _EPISODE_FILE.fullmatch(f"{path.parent.name}/{path.name}")
    if not match or path.parent.parent.name != key:
        return None
    try:
        return int(match[1]), int(match[3]), float(match[2])
    except ValueError:
        return None


def load_episode(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, spec) of a cached episode file (safetensors: no pickle). A file where this cache
    keeps episodes that cannot be read, or holds other arrays than its episode's, is simulated
    again and rewritten, with a warning naming it; a file of another cache key is an error."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path, key = Path(path), cache_key()
    whose = _whose(path, key)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        arrays = load_file(str(path))
    except (SafetensorError, OSError) as err:
        problem = f"cannot be read ({err})"
    else:
        if meta.get("key") != key and whose is None:
            raise ValueError(f"{path}: an episode of touch-world {meta.get('key', meta.get('version'))!r}, this "
                             f"generator's key is {key!r}")
        found = {k: (v.shape, _DTYPES.get(v.dtype.type, str(v.dtype))) for k, v in arrays.items()}
        problem = _problem(meta, found, key, whose[2] if whose else None)
        if problem is None:
            return arrays, json.loads(meta["spec"])
    if whose is None:
        raise ValueError(f"{path}: {problem}; it is not where this cache keeps episodes "
                         f"(<cache>/touch-world/{key}/seed-<s>-<seconds>s/<index>.safetensors), so it cannot be "
                         f"simulated again")
    _resimulate_warning(path, problem)
    seed, index, seconds = whose
    arrays, spec = simulate(seed, index, seconds)
    _write(path, arrays, spec, key)
    return arrays, spec
