"""Streaming loaders of users' own interleaved data: JSONL + image files, and tar shards.

`DocumentLoader` reads `.jsonl` files and WebDataset-style `.tar` shards (also `.tar.gz`,
`.tgz`) in order and yields `Document`s whose media items are float tensors [F, C, H, W]
(F frames, an image being F=1; C=3; H=W=image_size; see `images.image_to_tensor`).
`batches` collates them with the one collator, `collate`.

JSONL: one JSON object per line (blank lines are ignored and are not records)::

    {"text": "<image> a red circle . <image> two frames of video", "media": ["a.png", ["clip/0.png", "clip/1.png"]]}

`text` holds one marker per media item, in order. A `media` entry that is a string is an
image; a list of strings is a clip of frames (same source size). Paths are relative to the
JSONL file's directory (absolute paths are used as given). `images` is accepted as an alias of
`media` (many captioning sets use it); giving both is a bad record. Other keys are ignored, and
a record without media must have no marker (a text-only document).

Tar shards: members are grouped by key, the member name up to the first dot of its base name,
directory included (as WebDataset does); a key's members must be adjacent in the shard. A key
with a `json` member is a record as above whose media entries name sibling extensions of the
same key: in `000017.json`, "0.png" is member `000017.0.png`. A key with a `txt` member and one
image member (`png`, `jpg`, `jpeg`, `webp`, ...), and no `json` or a `json` without "text"
(metadata, as img2dataset writes), is a caption document: text = "<image> " + caption. Shards are read as a stream (`tarfile` mode "r|*"), never
extracted to disk.

Bad records (invalid JSON, missing or empty text, missing image file or member, unreadable or
corrupt image, marker/media count mismatch, an empty clip or frames of different sizes) are
reported with file and line (JSONL, 1-based) or shard and key (tar). on_error="skip" logs a
warning on the "multisense.data" logger, appends a `BadRecord` to `loader.errors` and goes on,
in the first epoch only (later passes skip the same records silently);
on_error="raise" raises ValueError naming the place and the reason. A shard that breaks off
mid-stream is reported the same way and the loader moves on to the next file.

Records are numbered across all files in order, bad ones included. Rank r of world_size owns
the records whose number is r modulo world_size. `loader.position` is the number of the next
record to read and `loader.epoch` the number of whole passes done; pass them back as `start`
and `epoch` to resume exactly (skipped bad records included). One `for` loop over the loader is
one pass from `position` to the end, after which `position` returns to 0 and `epoch` goes up.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..config import check_choice
from ..tokens import MEDIA_MARKER
from .collate import Document, collate
from .images import image_to_tensor

log = logging.getLogger("multisense.data")

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
# Errors a shard or file can raise while being streamed (truncated tar, corrupt gzip, I/O).
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int | None  # JSONL line, 1-based
    key: str | None  # tar shard key
    reason: str

    def __str__(self) -> str:
        where = (f"{self.file}:{self.line}" if self.line is not None else
                 f"{self.file}[{self.key}]" if self.key is not None else self.file)
        return f"{where}: {self.reason}"


class _Bad(Exception):
    """A record that cannot become a Document; the loader adds the place."""


ON_ERROR = ("skip", "raise")


def expand_paths(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike],
                 where: str = "paths_or_globs") -> list[str]:
    """The .jsonl files and tar shards that paths, globs (sorted) and directories stand for, in
    order; errors name `where` (the argument, or a config key)."""
    items = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    files = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(item), "*")) if _kind(p))
        else:
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not found or not all(map(os.path.isfile, found)):
            raise ValueError(f"{where}: {item!r} matches no .jsonl file or tar shard")
        for p in found:
            if _kind(p) is None:
                raise ValueError(f"{where}: {p!r} is neither .jsonl nor .tar/.tar.gz/.tgz")
        files += found
    if not files:
        raise ValueError(f"{where}: expected at least one path, got none")
    return files


def _kind(path: str) -> str | None:
    if path.endswith(".jsonl"):
        return "jsonl"
    if path.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


class DocumentLoader:
    """Documents from JSONL files and tar shards, streamed; see the module docstring for the formats."""

    def __init__(self, paths_or_globs, *, image_size: int, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, marker: str = MEDIA_MARKER, on_error: str = "skip",
                 rank: int = 0, world_size: int = 1, start: int = 0, epoch: int = 0):
        check_choice(on_error, ON_ERROR, "on_error")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start: expected a record number >= 0, got {start!r}")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected a count of passes >= 0, got {epoch!r}")
        if not marker:
            raise ValueError("marker: expected a non-empty string")
        self.files = expand_paths(paths_or_globs)
        self.marker, self.on_error, self.rank, self.world_size = marker, on_error, rank, world_size
        self.image_size, self.mean, self.std = image_size, mean, std
        self.transform(Image.new("RGB", (1, 1)))  # bad image_size/mean/std fail here, not mid-epoch
        self.position, self.epoch = start, epoch
        self.errors: list[BadRecord] = []

    def __iter__(self) -> Iterator[Document]:
        index = 0  # number of the next record across all files
        for path in self.files:
            reader = self._jsonl if _kind(path) == "jsonl" else self._tar
            # Only owned records at or past the resume point are parsed and decoded.
            records = reader(path, lambda i, base=index: self._wanted(base + i))
            where: int | str | None = None
            while True:
                try:
                    where, build = next(records)
                except StopIteration:
                    break
                except _STREAM_ERRORS as e:
                    after = "" if where is None else f" after record {where!r}"
                    self._bad(path, None, f"unreadable{after} ({type(e).__name__}: {e}); rest of the file skipped")
                    break
                index += 1
                if build is None:
                    continue
                try:
                    doc = build()
                except _Bad as e:
                    self._bad(path, where, str(e))
                    self.position = index
                    continue
                self.position = index  # set before yielding: a checkpoint taken now resumes after this record
                yield doc
        self.position, self.epoch = 0, self.epoch + 1

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One Pillow image -> [C, H, W], normalised."""
        return image_to_tensor(image, self.image_size, mean=self.mean, std=self.std)

    def _wanted(self, index: int) -> bool:
        return index >= self.position and index % self.world_size == self.rank

    def _bad(self, path: str, where: int | str | None, reason: str) -> None:
        bad = BadRecord(path, where if isinstance(where, int) else None, where if isinstance(where, str) else None,
                        reason)
        if self.on_error == "raise":
            raise ValueError(f"{bad} (on_error='raise'; pass on_error='skip' to skip bad records)")
        # Every pass meets the same bad records: report them in the first only (a loader resumed
        # in a later epoch met them in its first), so neither the log nor `errors` keeps growing.
        if self.epoch == 0:
            log.warning("%s (skipped)", bad)
            self.errors.append(bad)

    # Sources: each yields (line or key, build) per record; build() -> Document, None if not wanted.

    def _jsonl(self, path: str, wanted: Callable[[int], bool]) -> Iterator[tuple[int, Callable[[], Document] | None]]:
        root = os.path.dirname(os.path.abspath(path))

        def open_media(name: str):
            full = os.path.join(root, name)
            if not os.path.isfile(full):
                raise _Bad(f"missing image {name!r} ({full})")
            return full

        i = 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                yield line_no, (lambda raw=raw: self._document(_parse_json(raw), open_media)) if wanted(i) else None
                i += 1

    def _tar(self, path: str, wanted: Callable[[int], bool]) -> Iterator[tuple[str, Callable[[], Document] | None]]:
        i, key, members = 0, None, None  # members: suffix -> bytes, None while skipping a record
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                head, base = os.path.split(info.name)
                stem, dot, suffix = base.partition(".")
                if not stem or not dot:
                    continue  # as WebDataset: no extension, or a hidden file such as macOS's ._x.png
                k, suffix = os.path.join(head, stem), suffix.lower()
                if k != key:
                    if key is not None:
                        yield key, self._tar_build(key, members)
                    key, members = k, ({} if wanted(i) else None)
                    i += 1
                if members is not None:
                    members[suffix] = tar.extractfile(info).read()
        if key is not None:
            yield key, self._tar_build(key, members)

    def _tar_build(self, key: str, members: dict[str, bytes] | None) -> Callable[[], Document] | None:
        if members is None:
            return None

        def open_media(name: str):
            if name.lower() not in members:  # suffixes compare lower-case, as in WebDataset
                raise _Bad(f"missing member {key}.{name}")
            return io.BytesIO(members[name.lower()])

        def build() -> Document:
            if "json" in members:
                record = _parse_json(members["json"])
                # A json without "text" beside a txt is metadata of a caption pair (img2dataset writes
                # key.json, key.txt, key.jpg); otherwise the json is the record.
                if not ("txt" in members and isinstance(record, dict) and "text" not in record):
                    return self._document(record, open_media)
            images = [s for s in members if s in IMAGE_SUFFIXES]
            if "txt" not in members or len(images) != 1:
                raise _Bad(f"expected a .json member, or a .txt and one image member; found {sorted(members)}")
            caption = _decode(members["txt"]).strip()
            if not caption:
                raise _Bad("empty text")
            return self._document({"text": f"{self.marker} {caption}", "media": images}, open_media)

        return build

    def _document(self, record, open_media: Callable[[str], object]) -> Document:
        """Validate one parsed record and load its media; cheap checks first, images last."""
        if not isinstance(record, dict):
            raise _Bad(f"expected a JSON object, got {type(record).__name__}")
        if "media" in record and "images" in record:
            raise _Bad("both 'media' and 'images' given; 'images' is an alias of 'media', give one")
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Bad("missing 'text'" if text is None else f"empty text or not a string: {text!r}")
        media = record.get("media", record.get("images", []))
        if not isinstance(media, list):
            raise _Bad(f"'media': expected a list of paths or lists of paths, got {type(media).__name__}")
        for m in media:
            if not (isinstance(m, str) or (isinstance(m, list) and m and all(isinstance(p, str) for p in m))):
                raise _Bad(f"'media': expected a path or a non-empty list of paths, got {m!r}")
        markers = text.count(self.marker)
        if markers != len(media):
            raise _Bad(f"{markers} {self.marker} markers in text but {len(media)} media items")
        return Document(text, [self._clip([m] if isinstance(m, str) else m, open_media) for m in media])

    def _clip(self, names: list[str], open_media) -> torch.Tensor:
        frames = []
        for name in names:
            source = open_media(name)
            try:
                with Image.open(source) as image:
                    image.load()
                    frames.append(image.copy())
            except Exception as e:  # Pillow raises many types on corrupt data; none may end a run
                raise _Bad(f"unreadable image {name!r}: {type(e).__name__}: {e}") from e
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise _Bad(f"clip frames differ in size {[f.size for f in frames]} (W, H): {names}")
        return torch.stack([self.transform(f) for f in frames])


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"not UTF-8: {e}") from e


def _parse_json(raw: bytes):
    try:
        return json.loads(_decode(raw))
    except json.JSONDecodeError as e:
        raise _Bad(f"invalid JSON: {e}") from e


def batches(documents: Iterable[Document], tokenizer, batch_size: int, *, epochs: int | None = 1,
            marker: str = MEDIA_MARKER, seq2seq: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches of `batch_size` documents through `collate` (`seq2seq`: laid out for an
    encoder-decoder), over `epochs` passes (None: forever). A batch may span two epochs; the last, smaller batch comes at the end of the last
    epoch. With DDP and on_error="skip" ranks may get different numbers of documents, so bound
    the run by steps (epochs=None) rather than by epochs."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs: expected a positive int or None, got {epochs!r}")
    pending: list[Document] = []
    epoch = 0
    while epochs is None or epoch < epochs:
        # A loader resumed from a checkpoint taken after an epoch's last document starts past
        # every record it owns: that empty pass is the rest of the epoch. Only a pass from the
        # first record (other iterables have no position) that gives nothing is an error.
        whole_pass = getattr(documents, "position", 0) == 0
        count = 0
        for doc in documents:
            count += 1
            pending.append(doc)
            if len(pending) == batch_size:
                yield collate(pending, tokenizer, marker=marker, seq2seq=seq2seq)
                pending = []
        if count == 0 and whole_pass and epochs is None:
            raise ValueError("documents: a whole pass gave no document (all records bad, or a used-up iterator)")
        epoch += 1
    if pending:
        yield collate(pending, tokenizer, marker=marker, seq2seq=seq2seq)
