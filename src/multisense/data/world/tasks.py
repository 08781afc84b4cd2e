"""Tasks over touch-world episodes, as batches a FusionModel reads: each sensor's inputs in its
encoder's layout, by name.

    camera      -> vision encoder:       frames [T, 3, 32, 32] in [0, 1], mask [T]
    touch       -> tactile encoder:      frames [T, 3, 32, 32], mask [T], reference [3, 32, 32]
    wrist       -> force_torque encoder: wrench [T, 6], mask [T]
    microphone  -> audio encoder:        waveform [T], mask [T]

`occlusion` is the probability that an episode's camera is the occluded one (blocked by the
gripper from the first contact on), drawn per episode from the seed. Tasks: "material" (4
classes: which surface, the question "does this feel like silk or burlap?"), and "slipping"
(did the finger slip while in contact: a contact-event question whose answer varies with
friction and press depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .episodes import generate, load_episode
from .materials import NAMES

SENSORS = {"camera": "vision", "touch": "tactile", "wrist": "force_torque", "microphone": "audio"}
TASKS = ("material", "slipping")


def sensor_inputs(arrays: dict[str, np.ndarray], *, occluded: bool, sensors=tuple(SENSORS)) -> dict[str, dict]:
    """One episode's streams as each sensor encoder's keyword inputs (no batch dimension)."""
    out = {}
    frames = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731  [T, H, W, C] -> [T, C, H, W]
    if "camera" in sensors:
        cam = frames(arrays["camera_occluded" if occluded else "camera"])
        out["camera"] = {"frames": cam, "mask": torch.ones(cam.shape[0], dtype=torch.bool)}
    if "touch" in sensors:
        tac = frames(arrays["tactile"])
        out["touch"] = {"frames": tac, "mask": torch.ones(tac.shape[0], dtype=torch.bool),
                        "reference": frames(arrays["tactile_reference"][None])[0]}
    if "wrist" in sensors:
        w = torch.from_numpy(arrays["wrench"]).float()
        out["wrist"] = {"wrench": w, "mask": torch.ones(w.shape[0], dtype=torch.bool)}
    if "microphone" in sensors:
        a = torch.from_numpy(arrays["audio"]).float()
        out["microphone"] = {"waveform": a, "mask": torch.ones(a.shape[0], dtype=torch.bool)}
    return out


def class_names(task: str) -> list[str]:
    """The answers of `task`, in label order."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    return list(NAMES) if task == "material" else ["holds", "slips"]


def label(arrays: dict[str, np.ndarray], spec: dict, task: str) -> int:
    if task == "material":
        return NAMES.index(spec["material"])
    if task == "slipping":
        return int(arrays["slipping"].mean() > 0.1)
    raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")


class TouchEpisodes(torch.utils.data.Dataset):
    """Cached episodes (paths from `generate`), held in memory as the simulator wrote them."""

    def __init__(self, paths, *, task: str = "material", sensors=tuple(SENSORS), occlusion: float = 0.0,
                 seed: int = 0):
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        unknown = [s for s in sensors if s not in SENSORS]
        if unknown:
            raise ValueError(f"sensors: no sensor named {unknown[0]!r} in the touch world (it has {list(SENSORS)})")
        if not 0.0 <= occlusion <= 1.0:
            raise ValueError(f"occlusion: expected a probability in [0, 1], got {occlusion}")
        self.episodes = [load_episode(p) for p in paths]
        self.task, self.sensors, self.occlusion, self.seed = task, tuple(sensors), occlusion, seed

    def __len__(self) -> int:
        return len(self.episodes)

    def occluded(self, i: int) -> bool:
        return bool(np.random.default_rng([self.seed, i, 7]).random() < self.occlusion)

    def __getitem__(self, i: int) -> dict:
        arrays, spec = self.episodes[i]
        return {"sensors": sensor_inputs(arrays, occluded=self.occluded(i), sensors=self.sensors),
                "labels": label(arrays, spec, self.task)}


def collate_touch(samples: list[dict]) -> dict:
    """Stack episodes (equal lengths: episodes of one generator run share `seconds`)."""
    names = samples[0]["sensors"].keys()
    sensors = {n: {k: torch.stack([s["sensors"][n][k] for s in samples]) for k in samples[0]["sensors"][n]}
               for n in names}
    return {"sensors": sensors, "labels": torch.tensor([s["labels"] for s in samples])}


@dataclass
class WorldData:
    """Which touch-world episodes a run trains on (`data.world` of `multisense train`): episodes
    0 .. episodes-1 of world seed `seed`. Held-out evaluation uses another world seed."""

    episodes: int = 240
    seed: int = 0
    seconds: float = 3.0
    occlusion: float = 0.5  # probability that an episode's camera is blocked from the first contact on
    workers: int = 2  # processes that simulate the episodes not cached yet
    cache_dir: str | None = None  # default: $MULTISENSE_CACHE or ~/.cache/multisense


def world_dataset(world: WorldData, *, task: str, sensors, log=None) -> TouchEpisodes:
    """The episodes `world` names (simulated now where not cached), as a TouchEpisodes."""
    paths = generate(world.episodes, world.seed, seconds=world.seconds, cache_dir=world.cache_dir,
                     workers=world.workers, log=log)
    return TouchEpisodes(paths, task=task, sensors=sensors, occlusion=world.occlusion, seed=world.seed)


def touch_batches(dataset: TouchEpisodes, batch_size: int, seed: int = 0, *, start_step: int = 0,
                  rank: int = 0, world_size: int = 1, grad_accum: int = 1):
    """Endless shuffled micro-batches for train.loop.fit, grad_accum per optimiser step. Global
    sample j is dataset[permutation_e[j mod n]], pass e = j // n drawn from (seed, e): so the
    data position is the step (an exact resume), and process r of N takes samples r, r+N, ...
    of each global batch, as the procedural tasks do."""
    n, per_step = len(dataset), batch_size * world_size * grad_accum
    orders: dict[int, np.ndarray] = {}

    def sample(j: int) -> dict:
        e = j // n
        if e not in orders:
            orders.clear()
            orders[e] = np.random.default_rng([seed, e]).permutation(n)
        return dataset[int(orders[e][j % n])]

    step = start_step
    while True:
        mine = range(step * per_step + rank, (step + 1) * per_step, world_size)
        for a in range(grad_accum):
            yield collate_touch([sample(j) for j in mine[a * batch_size:(a + 1) * batch_size]])
        step += 1
