"""Writing files so that a reader never sees half of one, with the modes the umask gives.

Every file or folder multisense writes for later (model checkpoints, training checkpoints, the
backbone cache) is written under a temporary name beside its place and renamed into it once
complete: a run killed at any moment leaves the old version or the new one, never a mix.
`atomic_file` and `atomic_directory` are that one mechanism.

safetensors (0.8) writes `save_file` output to a temporary file created with mode 0600 and
renames it into place; `tempfile.mkdtemp` makes 0700 folders. Left so, weights, checkpoints and
the backbone cache would be readable by their owner only, whatever the umask says, unlike every
other file beside them. `give_default_mode` gives a path the mode a plain `open()` or `mkdir()`
would have given it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the umask can only be read by setting it: set it straight back
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """chmod `path` to 0666 (a file) or 0777 (a folder) less the process's umask."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def fsync(path: str | os.PathLike) -> None:
    """Flush a written file to the disk, so a rename after it never publishes unwritten bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        give_default_mode(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """`build(tmp)` fills a temporary folder beside `path`, which then replaces `path` whole
    (an existing `path` is removed first: a forced rebuild, or a re-saved checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        build(tmp)
        for item in [tmp, *tmp.rglob("*")]:
            give_default_mode(item)
            if item.is_file():
                fsync(item)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path

