"""The modes of the files multisense writes.

safetensors (0.8) writes `save_file` output to a temporary file created with mode 0600 and
renames it into place; `tempfile.mkdtemp` makes 0700 folders. Left so, weights, checkpoints and
the backbone cache would be readable by their owner only, whatever the umask says, unlike every
other file beside them. `give_default_mode` gives a path the mode a plain `open()` or `mkdir()`
would have given it.
"""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the umask can only be read by setting it: set it straight back
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """chmod `path` to 0666 (a file) or 0777 (a folder) less the process's umask."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
