"""Shape checks with error messages that name the argument, the expected and the received shape.

Used by every public block so that a wrong tensor fails at the door, not three layers deep
inside a matmul with an anonymous size mismatch.
"""

from __future__ import annotations

import torch


def check_shape(name: str, tensor: torch.Tensor, spec: str, **sizes: int) -> dict[str, int]:
    """Check `tensor` against `spec`, e.g. ``"B M F S D"`` with ``D=1024``; return the sizes.

    Letters given in `sizes` must match exactly; a letter used twice must be the same size.
    """
    letters = spec.split()
    expected = ", ".join(f"{k}={sizes[k]}" if k in sizes else k for k in letters)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape [{expected}], got {type(tensor).__name__}")
    got = list(tensor.shape)
    if tensor.ndim != len(letters):
        raise ValueError(f"{name}: expected shape [{expected}], got {got}")
    found: dict[str, int] = {}
    for letter, size in zip(letters, got):
        want = sizes.get(letter, found.get(letter))
        if want is not None and want != size:
            raise ValueError(f"{name}: expected shape [{expected}], got {got}")
        found[letter] = size
    return found
