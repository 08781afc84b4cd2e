import csv
import math
import struct

import pytest

from multisense.train.logs import RunLogger, _event, _masked_crc, _varint, crc32c, read_events


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _event_file(log_dir):
    (path,) = log_dir.glob("events.out.tfevents.*")
    return path


def test_crc32c_check_value_and_protobuf_encoding():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert _varint(300) == b"\xac\x02"  # the protobuf encoding guide's example
    assert _varint(-1) == b"\xff" * 9 + b"\x01"
    # A TensorFlow event file begins with a 24-byte record whose length CRC is these bytes.
    header = struct.pack("<Q", len(_event(0.0, file_version="brain.Event:2")))
    assert header == b"\x18" + b"\x00" * 7 and struct.pack("<I", _masked_crc(header)) == b'\xa3\x7fK"'


def test_round_trip_to_tensorboard_events(tmp_path):
    logged = [(1, {"loss": 2.5, "lr": 1e-4}), (2, {"loss": 0.1, "lr": 3e-5}), (10**10, {"loss": float("nan")}),
              (4, {"big": 1e300, "tiny": -1e-30})]
    with RunLogger(tmp_path, flush_every=1) as log:
        for step, metrics in logged:
            log.log(step, metrics)
    events = read_events(_event_file(tmp_path))
    f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]  # noqa: E731
    expected = [(1, "loss", 2.5), (1, "lr", f32(1e-4)), (2, "loss", f32(0.1)), (2, "lr", f32(3e-5)),
                (10**10, "loss", math.nan), (4, "big", math.inf), (4, "tiny", f32(-1e-30))]  # beyond float32: inf
    assert len(events) == len(expected)
    for (s, k, v), (es, ek, ev) in zip(events, expected):
        assert (s, k) == (es, ek) and (v == ev or math.isnan(v) and math.isnan(ev))


def test_a_flipped_byte_is_detected(tmp_path):
    with RunLogger(tmp_path) as log:
        log.log(1, {"loss": 1.0})
        log.log(2, {"loss": 0.5})
    path = _event_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01  # inside the last record's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"tfevents.*record 2"):
        read_events(path)


def test_csv_is_wide_and_widens_when_keys_appear_later(tmp_path):
    with RunLogger(tmp_path) as log:
        log.log(1, {"step": 1, "loss": 2.0, "lr": 0.1})  # fit()'s records carry a step: skipped
        log.log(2, {"loss": 1.5, "lr": 0.1, "eval_loss": 1.7})
        log.log(3, {"loss": float("nan"), "lr": 0.1})
    assert _rows(tmp_path / "metrics.csv") == [["step", "loss", "lr", "eval_loss"], ["1", "2.0", "0.1", ""],
                                                ["2", "1.5", "0.1", "1.7"], ["3", "nan", "0.1", ""]]


def test_disabled_logger_writes_nothing(tmp_path):
    with RunLogger(tmp_path / "run", enabled=False) as log:
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_resume_appends_and_an_existing_log_is_not_overwritten(tmp_path):
    with RunLogger(tmp_path) as log:
        log.log(1, {"loss": 2.0})
    with pytest.raises(FileExistsError, match="resume=True"):
        RunLogger(tmp_path)
    with RunLogger(tmp_path, resume=True) as log:
        log.log(2, {"loss": 1.0, "acc": 0.5})
    assert _rows(tmp_path / "metrics.csv") == [["step", "loss", "acc"], ["1", "2.0", ""], ["2", "1.0", "0.5"]]
    events = sorted(e for p in tmp_path.glob("events.out.tfevents.*") for e in read_events(p))
    assert events == [(1, "loss", 2.0), (2, "acc", 0.5), (2, "loss", 1.0)]


def test_flush_puts_every_row_logged_so_far_on_disk(tmp_path):
    log = RunLogger(tmp_path, flush_every=1000)
    log.log(1, {"loss": 2.0})
    log.log(2, {"loss": 1.0})
    log.flush()
    assert _rows(tmp_path / "metrics.csv") == [["step", "loss"], ["1", "2.0"], ["2", "1.0"]]
    assert [e[0] for e in read_events(_event_file(tmp_path))] == [1, 2]
    log.close()


def test_resume_drops_the_rows_after_the_step_it_resumes_from(tmp_path):
    # A run killed after its checkpoint at step 2 had logged steps 3 and 4; the resumed run logs
    # them again, so the first run's copies go.
    with RunLogger(tmp_path) as log:
        for step in (1, 2, 3, 4):
            log.log(step, {"loss": float(step)})
    with RunLogger(tmp_path, resume=True, resume_step=2) as log:
        log.log(3, {"loss": 30.0})
    assert _rows(tmp_path / "metrics.csv") == [["step", "loss"], ["1", "1.0"], ["2", "2.0"], ["3", "30.0"]]
