"""The touch world: a MuJoCo-simulated gripper touching, pressing, sliding on and lifting off
patches of material, with camera, tactile, force-torque and audio streams at their native rates.

    from multisense.data.world import generate, load_episode
    paths = generate(400, seed=0)          # simulated once, then read from the cache
    arrays, spec = load_episode(paths[0])
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, before anything imports mujoco

from .episodes import VERSION, cache_key, default_cache_dir, episode_dir, generate, load_episode, simulate  # noqa: E402
from .materials import MATERIALS, NAMES, Material, height_maps, material  # noqa: E402

__all__ = ["VERSION", "cache_key", "default_cache_dir", "episode_dir", "generate", "load_episode", "simulate",
           "MATERIALS", "NAMES", "Material", "height_maps", "material"]
