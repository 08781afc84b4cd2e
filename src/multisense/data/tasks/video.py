"""Video: one shape moving in one of 4 (or 8) directions; only the frame order tells.
"""

from __future__ import annotations

import numpy as np

from .. import scenes
from ..images import to_pixel_values
from .base import DIRECTIONS, MARKER, ClassificationTask


def moving_clip(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames [F, C, H, W] of `image` [C, H, W], frame t rolled by shifts[t] = (rows, columns).

    The canvas wraps around (np.roll), so a shift never loses the shape.
    """
    _, H, W = image.shape
    rows = (np.arange(H)[None, :] - shifts[:, 0, None]) % H  # [F, H]
    cols = (np.arange(W)[None, :] - shifts[:, 1, None]) % W  # [F, W]
    return image[:, rows[:, :, None], cols[:, None, :]].transpose(1, 0, 2, 3)


class Video(ClassificationTask):
    """One shape moving `travel` pixels in one of 4 (or 8) directions over F frames.

    The path is centred on a point drawn uniformly within `jitter` pixels of the canvas centre,
    with the same random draws whatever the direction, so a clip played backwards is exactly
    the clip of the opposite direction: the unordered set of frames cannot tell a direction
    from its opposite (nor can anything blind to order do better than name the axis, 1/2 with
    4 directions). Frame t sits at fraction t/(F-1) of the path, so a clip of 30 frames is the
    same motion as one of 8, sampled more finely (the frame-interpolation experiment).

    `lead` is a training aid, 0 (the task proper) by default: each clip's path is pushed forward
    along its direction by a uniform fraction in [0, lead] of half its travel, so that where the
    shape is, on average, hints the direction. With small frame embeddings and no other help, the
    demo-size model stayed at chance on the order-only task, and a lead got it going, but some
    seeds then leaned on the hint and failed at lead 0. The `video` preset therefore trains on the
    task proper, with in-words distillation and unit-scale frame embeddings (measured:
    docs/history.md).
    """

    name = "video"

    def __init__(self, *, frames: int = 8, directions: int = 4, travel: int = 12, jitter: int = 3,
                 lead: float = 0.0, image_size: int = 32, noise: float = 0.05):
        super().__init__(image_size=image_size, noise=noise)
        if directions not in (4, 8):
            raise ValueError(f"directions: expected 4 or 8, got {directions}")
        if frames < 2:
            raise ValueError(f"frames: expected at least 2 (the order is the signal), got {frames}")
        if not 2 <= travel <= image_size // 2:
            raise ValueError(f"travel: expected 2 to {image_size // 2} pixels (half the canvas), got {travel}")
        if not 0 <= jitter <= image_size // 4:
            raise ValueError(f"jitter: expected 0 to {image_size // 4} pixels, got {jitter}")
        if not 0.0 <= lead <= 1.0:
            raise ValueError(f"lead: expected a fraction in [0, 1], got {lead}")
        self.frames, self.travel, self.jitter, self.lead = frames, travel, jitter, float(lead)
        self.classes = tuple(DIRECTIONS)[:directions]
        self.answers = self.classes
        self.prompt = f"direction : {MARKER}"

    def __repr__(self) -> str:
        return (f"Video(frames={self.frames}, directions={len(self.classes)}, travel={self.travel}, "
                f"jitter={self.jitter}, lead={self.lead}, image_size={self.image_size})")

    def shifts(self, direction: str, centre: np.ndarray, lead: float = 0.0) -> np.ndarray:
        """Integer (rows, columns) shift [F, 2] of each frame from the canvas centre.

        Displacement along the path is travel * (2t - (F-1)) / (2(F-1)): exact in floating
        point up to the sign, and rounded half-to-even, so that reversing the frames of one
        direction gives exactly the opposite direction's shifts.
        """
        F = self.frames
        along = self.travel * (2 * np.arange(F) - (F - 1)) / (2 * (F - 1)) + lead * self.travel / 2  # [F]
        return centre[None, :] + np.round(along)[:, None].astype(np.int64) * np.array(DIRECTIONS[direction])

    def draw(self, rng, classes, split):
        size = self.image_size
        out = []
        for c in classes:
            # Every draw precedes and ignores the class: opposite directions share them.
            obj = self._one_object(rng, x=size / 2, y=size / 2)
            image = scenes.render((obj,), rng, image_size=size, noise=0.0)
            centre = rng.integers(-self.jitter, self.jitter + 1, size=2)
            lead = rng.uniform(0.0, self.lead)
            clip = moving_clip(image, self.shifts(self.classes[c], centre, lead))
            clip = clip + self.noise * rng.standard_normal(clip.shape, dtype=np.float32)  # float32: 2x faster
            out.append([to_pixel_values(np.clip(clip, 0.0, 1.0))])
        return out
