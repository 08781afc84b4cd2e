"""Run logger: a wide CSV (`metrics.csv`) plus TensorBoard event files, with no tensorboard/protobuf.

CSV: one row per `log` call, columns `step` then each metric name in order of first appearance
(what `pandas.read_csv` and spreadsheets expect). A metric absent from a call leaves an empty
cell; when a call brings a new name (eval metrics every N steps), the file is rewritten once with
the wider header. Non-finite values are written as `nan`/`inf`, which pandas reads back as such.

TensorBoard: `events.out.tfevents.<unix time>.<hostname>`, a TFRecord file
(https://www.tensorflow.org/tutorials/load_data/tfrecord): per record a uint64 LE length, the
masked CRC32C of those 8 bytes, the data, the masked CRC32C of the data. The data is an Event
protobuf (tensorflow/core/util/event.proto), hand-encoded: wall_time double = 1, step int64 = 2,
file_version string = 3 (first record, "brain.Event:2"), summary = 5; Summary{repeated Value
value = 1}, Value{tag string = 1, simple_value float = 2}.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import struct
import time
from pathlib import Path

CSV_NAME = "metrics.csv"


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses; table-driven, pure Python."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 are encoded as their 64-bit two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == 2:  # length-delimited
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def _f32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite in float64 but beyond float32: TensorBoard would show inf anyway
        return struct.pack("<f", math.copysign(math.inf, value))


def _event(wall_time: float, step: int = 0, file_version: str | None = None,
           values: dict[str, float] | None = None) -> bytes:
    out = _field(1, 1, struct.pack("<d", wall_time))
    if step:  # proto3 leaves default values out; this keeps the first record byte-identical to TF's
        out += _field(2, 0, _varint(step))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if values:
        summary = b"".join(_field(1, 2, _field(1, 2, k.encode()) + _field(2, 5, _f32(v)))
                           for k, v in values.items())
        out += _field(5, 2, summary)
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class RunLogger:
    """Log `{name: float}` per step to `log_dir/metrics.csv` and a TensorBoard event file.

    `enabled=False` (ranks other than 0) makes every method a no-op and touches no file.
    `resume=True` appends to an existing `metrics.csv` and starts a new event file beside the old
    ones (TensorBoard reads them all); without it an existing log is an error, not overwritten.
    `resume_step`: the step the run resumes from; CSV rows of later steps are dropped, as a run
    killed after its last checkpoint logged them and the resumed run logs those steps again.
    Files are flushed every `flush_every` calls, on `flush()` (the trainer calls it at every
    checkpoint, so a run killed after one keeps every row logged before it) and on `close()`.
    """

    def __init__(self, log_dir: str | os.PathLike, *, enabled: bool = True, resume: bool = False,
                 resume_step: int | None = None, flush_every: int = 10):
        self.enabled, self.flush_every, self._calls = enabled, flush_every, 0
        if not enabled:
            return
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / CSV_NAME
        exists = self.csv_path.exists() and self.csv_path.stat().st_size > 0
        if (exists or any(self.log_dir.glob("events.out.tfevents.*"))) and not resume:
            raise FileExistsError(f"log_dir {self.log_dir} already holds a run log; pass resume=True to append")
        self.columns = ["step"]
        if exists:
            with open(self.csv_path, newline="") as f:
                self.columns, *rows = csv.reader(f)
            if resume_step is not None and any(int(r[0]) > resume_step for r in rows):
                self._rewrite([r for r in rows if int(r[0]) <= resume_step])
        self._csv = open(self.csv_path, "a" if exists else "w", newline="")
        if not exists:
            csv.writer(self._csv).writerow(self.columns)
        self.events_path = self.log_dir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._tb = open(self.events_path, "ab")  # "a": a resume in the same second shares the file
        self._tb.write(_record(_event(time.time(), file_version="brain.Event:2")))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write one CSV row and one TensorBoard event; a `step` key in `metrics` is skipped."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items() if k != "step"}
        new = [k for k in values if k not in self.columns]
        if new:
            self._widen(new)
        csv.writer(self._csv).writerow([step] + [values.get(c, "") for c in self.columns[1:]])
        self._tb.write(_record(_event(time.time(), int(step), values=values)))
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        """Hand every row and event logged so far to the OS: they survive the process being
        killed (not a machine crash; that would need fsync)."""
        if self.enabled:
            self._csv.flush()
            self._tb.flush()

    def _widen(self, new: list[str]) -> None:
        # Rewrite the whole file under the wider header, so it stays one rectangular table.
        self._csv.close()
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        self.columns += new
        self._rewrite(rows)
        self._csv = open(self.csv_path, "a", newline="")

    def _rewrite(self, rows: list[list[str]]) -> None:
        """Replace the CSV with `self.columns` and `rows` (padded to the header), atomically."""
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([self.columns] + [r + [""] * (len(self.columns) - len(r)) for r in rows])
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self.enabled and not self._csv.closed:
            self._csv.close()
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fields(buf: bytes):
    """Yield (field number, value) of a protobuf message; value is int, or bytes for wire 1, 2, 5."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        elif wire == 2:
            size, i = _read_varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return n, i


def read_events(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """(step, tag, value) for every scalar in an event file, checking both CRCs of each record."""
    data, out, pos, index = Path(path).read_bytes(), [], 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: record {index} is truncated")
        header, (hcrc,) = data[pos:pos + 8], struct.unpack_from("<I", data, pos + 8)
        (length,) = struct.unpack("<Q", header)
        body, end = data[pos + 12:pos + 12 + length], pos + 16 + length
        if end > len(data):
            raise ValueError(f"{path}: record {index} is truncated")
        (dcrc,) = struct.unpack_from("<I", data, end - 4)
        if _masked_crc(header) != hcrc or _masked_crc(body) != dcrc:
            raise ValueError(f"{path}: CRC mismatch in record {index}")
        step, summary = 0, b""
        for number, value in _fields(body):
            if number == 2:
                step = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 5:
                summary = value
        for number, value in _fields(summary):
            if number == 1:
                fields = dict(_fields(value))
                out.append((step, fields.get(1, b"").decode(), struct.unpack("<f", fields[2])[0]))
        pos, index = end, index + 1
    return out
