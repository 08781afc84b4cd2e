"""Contact audio, synthesised from the physics: while the fingertip slides, the texture under it
excites the pad (the rate of change of the surface height along its path, heard at the audio
rate), scaled by the normal force; a small sensor hiss is always there. So the sound depends on
the material (rough textures are loud and broadband, the smooth one nearly silent), on how hard
the finger presses and on how fast it slides.

Shapes: physics at `physics_rate` (positions [T, 2] m, normal force [T] N) -> waveform [T_audio]
at `audio_rate`, in [-1, 1].
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates


def synthesize(positions: np.ndarray, normal_force: np.ndarray, fine: np.ndarray, relief: float,
               half_extent: float, *, physics_rate: float, audio_rate: float, rng: np.random.Generator,
               gain: float = 2.0e3, hiss: float = 0.003) -> np.ndarray:
    T = positions.shape[0]
    duration = T / physics_rate
    n = int(round(duration * audio_rate))
    t_phys = np.arange(T) / physics_rate
    t_audio = np.arange(n) / audio_rate
    x = np.interp(t_audio, t_phys, positions[:, 0])
    y = np.interp(t_audio, t_phys, positions[:, 1])
    force = np.interp(t_audio, t_phys, normal_force).clip(min=0.0)
    size = fine.shape[0]
    to_index = lambda v: (v / half_extent + 1) * 0.5 * (size - 1)  # noqa: E731
    height = relief * map_coordinates(fine, [to_index(y), to_index(x)], order=3, mode="nearest")  # m, along the path
    excitation = np.gradient(height) * audio_rate  # m/s: the texture's vertical speed under the pad
    wave = gain * force * excitation * 1e-3 + rng.normal(0.0, hiss, n)
    return np.tanh(wave).astype(np.float32)  # a soft limit, as a microphone preamp clips
