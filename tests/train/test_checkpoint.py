import os

import pytest
import torch

from multisense.train import checkpoint as ckpt


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_checkpoint_files_get_the_mode_the_umask_gives(tmp_path, umask_022):
    # safetensors writes through a 0600 temporary file: without a chmod the weights would be
    # readable by their owner only, unlike the state and manifest beside them
    saved = ckpt.save(tmp_path, step=1, weights={"w": torch.zeros(2)}, state={"x": torch.ones(1)}, info={})
    assert {name: mode(saved / name) for name in (ckpt.WEIGHTS, ckpt.STATE, ckpt.MANIFEST)} == \
        {ckpt.WEIGHTS: 0o644, ckpt.STATE: 0o644, ckpt.MANIFEST: 0o644}
    assert mode(saved) == 0o755
