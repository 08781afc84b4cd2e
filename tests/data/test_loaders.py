import io
import json
import logging
import os
import tarfile

import pytest
import torch
from PIL import Image

from multisense.data.images import image_to_tensor
from multisense.data.loaders import BadRecord, DocumentLoader, batches
from tests.data.test_collate import WordTokenizer

S = 4  # image_size: small keeps the tests fast


def save(path, size=(8, 6), color=(255, 0, 0), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def image_bytes(size=(8, 6), color=(255, 0, 0), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def data(tmp_path):
    """A directory of images: PNG, JPEG, a two-frame clip, one of another size, one corrupt."""
    save(tmp_path / "red.png")
    save(tmp_path / "blue.jpg", size=(6, 8), color=(0, 0, 255), fmt="JPEG")
    save(tmp_path / "clip" / "0.png", color=(0, 255, 0))
    save(tmp_path / "clip" / "1.png", color=(0, 0, 0))
    save(tmp_path / "odd.png", size=(5, 5))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tar(path, members, mode="w"):
    """members: [(name, bytes)] in order, as a shard writer would put them."""
    with tarfile.open(path, mode) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def doc_record(i):
    return {"text": f"<image> doc {i}", "media": ["red.png"]}


# --- the transform -------------------------------------------------------------------------------


def test_transform_gives_square_rgb_in_minus_one_one_centre_cropped():
    image = Image.new("RGB", (30, 10), (0, 0, 0))  # wide: black sides, a white band in the middle
    image.paste((255, 255, 255), (5, 0, 25, 10))
    x = image_to_tensor(image, 6)
    assert x.shape == (3, 6, 6) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # short side -> 6, long side -> 18 (band at 3..15), centre crop keeps columns 6..11: all white;
    # squashing instead of cropping would bring in the black sides
    assert torch.allclose(x, torch.ones(3, 6, 6), atol=1e-2)
    red = image_to_tensor(Image.new("RGB", (5, 9), (255, 0, 0)), 4)
    assert red[0].eq(1).all() and red[1:].eq(-1).all()


def test_transform_takes_any_mode_and_per_channel_mean_std():
    grey = Image.new("L", (4, 4), 255)
    assert image_to_tensor(grey, 4).shape == (3, 4, 4)
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    x = image_to_tensor(rgba, 2, mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 0.5))
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="image_size"):
        image_to_tensor(grey, 0)
    with pytest.raises(ValueError, match="mean: expected a float or 3 per-channel values"):
        image_to_tensor(grey, 2, mean=(0.5, 0.5))


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_images_clips_jpeg_alias_and_relative_paths(data):
    path = write_jsonl(data / "train.jsonl", [
        {"text": "<image> a red box . <image> two frames", "media": ["red.png", ["clip/0.png", "clip/1.png"]],
         "id": 7},
        "",  # blank lines are not records
        {"text": "<image> blue", "images": ["blue.jpg"]},
        {"text": "no media at all"},
    ])
    docs = list(DocumentLoader(path, image_size=S))
    assert [d.text for d in docs] == ["<image> a red box . <image> two frames", "<image> blue", "no media at all"]
    image, clip = docs[0].media
    assert image.shape == (1, 3, S, S) and clip.shape == (2, 3, S, S)
    assert clip[0, 1].eq(1).all() and clip[1].eq(-1).all()  # green frame, then black
    blue = docs[1].media[0]
    assert blue[0, 2].mean() > 0.9 and blue[0, 0].mean() < -0.9  # JPEG: approximately blue
    assert docs[2].media == []


BAD_JSONL = [
    ("invalid JSON", '{"text": "<image> x", "media": ['),
    ("expected a JSON object", "[1, 2]"),
    ("missing 'text'", {"media": []}),
    ("empty text", {"text": "   ", "media": []}),
    ("missing image 'nope.png'", {"text": "<image> x", "media": ["nope.png"]}),
    ("unreadable image 'corrupt.png'", {"text": "<image> x", "media": ["corrupt.png"]}),
    ("2 <image> markers in text but 1 media items", {"text": "<image> <image> x", "media": ["red.png"]}),
    ("0 <image> markers in text but 1 media items", {"text": "x", "media": ["red.png"]}),
    ("clip frames differ in size", {"text": "<image> x", "media": [["red.png", "odd.png"]]}),
    ("non-empty list of paths", {"text": "<image> x", "media": [[]]}),
    ("both 'media' and 'images'", {"text": "<image> x", "media": ["red.png"], "images": ["red.png"]}),
]


@pytest.mark.parametrize("reason, record", BAD_JSONL, ids=[r for r, _ in BAD_JSONL])
def test_jsonl_bad_record_is_skipped_with_file_and_line(data, caplog, reason, record):
    path = write_jsonl(data / "d.jsonl", [doc_record(0), record, doc_record(2)])
    loader = DocumentLoader(str(path), image_size=S)
    with caplog.at_level(logging.WARNING, logger="multisense.data"):
        docs = list(loader)
    assert [d.text for d in docs] == ["<image> doc 0", "<image> doc 2"]
    assert len(loader.errors) == 1
    bad = loader.errors[0]
    assert (bad.file, bad.line, bad.key) == (str(path), 2, None) and reason in bad.reason
    assert f"{path}:2: " in caplog.text and reason in caplog.text


@pytest.mark.parametrize("reason, record", BAD_JSONL, ids=[r for r, _ in BAD_JSONL])
def test_jsonl_bad_record_raises_naming_file_and_line(data, reason, record):
    path = write_jsonl(data / "d.jsonl", [doc_record(0), record])
    loader = DocumentLoader(str(path), image_size=S, on_error="raise")
    it = iter(loader)
    assert next(it).text == "<image> doc 0"
    with pytest.raises(ValueError) as e:
        next(it)
    assert f"{path}:2: " in str(e.value) and reason in str(e.value)


def test_jsonl_non_utf8_line_is_a_bad_record(data):
    path = data / "d.jsonl"
    path.write_bytes(json.dumps(doc_record(0)).encode() + b"\n\xff\xfe\n")
    loader = DocumentLoader(path, image_size=S)
    assert len(list(loader)) == 1 and loader.errors[0].line == 2 and "UTF-8" in loader.errors[0].reason


# --- tar shards ----------------------------------------------------------------------------------


def json_member(key, record):
    return (f"{key}.json", json.dumps(record).encode())


def test_tar_json_records_caption_pairs_and_keys_with_directories(tmp_path):
    shard = write_tar(tmp_path / "shard-000.tar", [
        json_member("000000", {"text": "<image> red then <image> clip", "media": ["0.png", ["f0.png", "f1.png"]]}),
        ("000000.0.png", image_bytes()),
        ("000000.f0.png", image_bytes(color=(0, 255, 0))),
        ("000000.f1.png", image_bytes(color=(0, 0, 0))),
        ("000001.txt", b"a blue square\n"),
        ("000001.jpg", image_bytes(color=(0, 0, 255), fmt="JPEG")),
        ("000001.cls", b"3"),  # other members are ignored
        ("part/000002.png", image_bytes()),
        ("part/000002.txt", "a red square \u00e9".encode()),
        ("part/._000002.png", b"macOS metadata"),  # hidden files are not members of any key
        ("000003.TXT", b"upper case"),  # suffixes compare lower-case
        ("000003.PNG", image_bytes()),
        json_member("000004", {"url": "http://x", "caption": "meta"}),  # img2dataset: metadata json
        ("000004.txt", b"img2dataset caption"),
        ("000004.jpg", image_bytes(fmt="JPEG")),
    ])
    loader = DocumentLoader([shard], image_size=S)
    docs = list(loader)
    assert [d.text for d in docs] == ["<image> red then <image> clip", "<image> a blue square",
                                      "<image> a red square \u00e9", "<image> upper case",
                                      "<image> img2dataset caption"]
    assert [m.shape[0] for m in docs[0].media] == [1, 2] and docs[0].media[1][1].eq(-1).all()
    assert docs[1].media[0].shape == (1, 3, S, S) and loader.errors == []


def test_tar_gz_shard_is_read_as_a_stream(tmp_path):
    shard = write_tar(tmp_path / "s.tar.gz", [("a.txt", b"caption"), ("a.png", image_bytes())], mode="w:gz")
    assert [d.text for d in DocumentLoader(shard, image_size=S)] == ["<image> caption"]


BAD_TAR = [
    ("invalid JSON", [("k.json", b"{")]),
    ("missing 'text'", [json_member("k", {"media": ["0.png"]}), ("k.0.png", image_bytes())]),
    ("empty text", [("k.txt", b"  \n"), ("k.png", image_bytes())]),
    ("missing member k.1.png", [json_member("k", {"text": "<image> x", "media": ["1.png"]}),
                                ("k.0.png", image_bytes())]),
    ("unreadable image '0.png'", [json_member("k", {"text": "<image> x", "media": ["0.png"]}),
                                  ("k.0.png", b"garbage")]),
    ("1 <image> markers in text but 2 media items", [
        json_member("k", {"text": "<image> x", "media": ["0.png", "1.png"]}),
        ("k.0.png", image_bytes()), ("k.1.png", image_bytes())]),
    ("clip frames differ in size", [json_member("k", {"text": "<image> x", "media": [["0.png", "1.png"]]}),
                                    ("k.0.png", image_bytes()), ("k.1.png", image_bytes(size=(3, 3)))]),
    ("expected a .json member, or a .txt and one image member", [("k.txt", b"caption only")]),
    ("expected a .json member, or a .txt and one image member", [("k.png", image_bytes())]),
]


def bad_tar(path, members):
    good = lambda k: [(f"{k}.txt", f"caption {k}".encode()), (f"{k}.png", image_bytes())]  # noqa: E731
    return write_tar(path, good("a") + members + good("z"))


@pytest.mark.parametrize("reason, members", BAD_TAR, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_TAR)])
def test_tar_bad_record_is_skipped_with_shard_and_key(tmp_path, caplog, reason, members):
    shard = bad_tar(tmp_path / "s.tar", members)
    loader = DocumentLoader(shard, image_size=S)
    with caplog.at_level(logging.WARNING, logger="multisense.data"):
        docs = list(loader)
    assert [d.text for d in docs] == ["<image> caption a", "<image> caption z"]
    assert [(b.file, b.line, b.key) for b in loader.errors] == [(str(shard), None, "k")]
    assert reason in loader.errors[0].reason and f"{shard}[k]: " in caplog.text


@pytest.mark.parametrize("reason, members", BAD_TAR, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_TAR)])
def test_tar_bad_record_raises_naming_shard_and_key(tmp_path, reason, members):
    shard = bad_tar(tmp_path / "s.tar", members)
    with pytest.raises(ValueError) as e:
        list(DocumentLoader(shard, image_size=S, on_error="raise"))
    assert f"{shard}[k]: " in str(e.value) and reason in str(e.value)


def test_truncated_shard_is_reported_and_the_next_file_still_read(tmp_path):
    members = [m for k in "abcdef" for m in [(f"{k}.txt", f"caption {k}".encode()), (f"{k}.png", image_bytes()),
                                             (f"{k}.bin", os.urandom(4000))]]  # cut lands mid-data
    raw = write_tar(tmp_path / "full.tar", members).read_bytes()
    broken = tmp_path / "0-broken.tar"
    broken.write_bytes(raw[: len(raw) // 2])
    after = write_tar(tmp_path / "1-after.tar", [("x.txt", b"still here"), ("x.png", image_bytes())])
    loader = DocumentLoader([broken, after], image_size=S)
    docs = list(loader)
    assert 1 <= len(docs) < 6 and docs[-1].text == "<image> still here"
    assert len(loader.errors) == 1 and loader.errors[0].file == str(broken)
    assert "rest of the file skipped" in loader.errors[0].reason
    with pytest.raises(ValueError, match="0-broken.tar: unreadable"):
        list(DocumentLoader([broken, after], image_size=S, on_error="raise"))


# --- sharding, resuming, arguments ---------------------------------------------------------------


@pytest.fixture
def mixed(data):
    """12 records: 7 in a JSONL file (one bad) then 5 in a tar shard (one bad)."""
    jsonl = write_jsonl(data / "a.jsonl", [doc_record(i) for i in range(3)] + ["{bad"]
                        + [doc_record(i) for i in range(4, 7)])
    members = []
    for i in range(7, 12):
        members += [(f"{i:06d}.txt", f"doc {i}".encode() if i != 9 else b""), (f"{i:06d}.png", image_bytes())]
    shard = write_tar(data / "b.tar", members)
    return [jsonl, shard]


def test_ranks_cover_every_record_exactly_once(mixed):
    expected = [f"<image> doc {i}" for i in range(12) if i not in (3, 9)]
    for world_size in (1, 2, 3, 5):
        seen, errors = [], []
        for rank in range(world_size):
            loader = DocumentLoader(mixed, image_size=S, rank=rank, world_size=world_size)
            texts = [d.text for d in loader]
            assert all(int(t.split()[-1]) % world_size == rank for t in texts)
            seen += texts
            errors += loader.errors
        assert sorted(seen) == sorted(expected)
        assert sorted((e.line or 0, e.key or "") for e in errors) == [(0, "000009"), (4, "")]


@pytest.mark.parametrize("world_size, rank", [(1, 0), (2, 1)])
def test_position_resumes_at_the_next_record(mixed, world_size, rank):
    full = [d.text for d in DocumentLoader(mixed, image_size=S, rank=rank, world_size=world_size)]
    for consumed in range(len(full)):
        loader = DocumentLoader(mixed, image_size=S, rank=rank, world_size=world_size)
        it = iter(loader)
        head = [next(it).text for _ in range(consumed)]
        resumed = DocumentLoader(mixed, image_size=S, rank=rank, world_size=world_size, start=loader.position)
        assert head + [d.text for d in resumed] == full
    # after a whole pass the position returns to 0 and the next pass starts over
    assert resumed.position == 0 and [d.text for d in resumed] == full


def test_a_pass_resumed_at_the_end_of_an_epoch_ends_that_epoch(mixed):
    # A checkpoint taken right after an epoch's last document holds a position past every record
    # this rank owns (12 records); the pass from there yields nothing and is the rest of that
    # epoch, not "a whole pass gave no document": the next batch comes from the next epoch.
    texts = [d.text for d in DocumentLoader(mixed, image_size=S, rank=1, world_size=2)]
    at_end = DocumentLoader(mixed, image_size=S, rank=1, world_size=2, start=12, epoch=3)
    batch = next(batches(at_end, WordTokenizer(), 2, epochs=None))
    assert batch["input_ids"].shape[0] == 2 and at_end.epoch == 4
    at_end = DocumentLoader(mixed, image_size=S, rank=1, world_size=2, start=12, epoch=3)
    assert [d.text for d in at_end] == [] and (at_end.epoch, at_end.position) == (4, 0)
    assert [d.text for d in at_end] == texts and (at_end.epoch, at_end.position) == (5, 0)


def test_a_bad_record_is_reported_once_not_every_epoch(mixed, caplog):
    loader = DocumentLoader(mixed, image_size=S)
    with caplog.at_level(logging.WARNING, logger="multisense.data"):
        for _ in range(3):
            assert len(list(loader)) == 10
    assert len(caplog.records) == 2 and len(loader.errors) == 2  # records 3 and 9, from the first pass
    # a loader resumed in a later epoch met them in its first: it reports nothing again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="multisense.data"):
        resumed = DocumentLoader(mixed, image_size=S, start=2, epoch=1)
        assert len(list(resumed)) == 8
    assert caplog.records == [] and resumed.errors == []
    with pytest.raises(ValueError, match="a.jsonl:4"):  # on_error="raise" raises in every epoch
        list(DocumentLoader(mixed, image_size=S, on_error="raise", epoch=1))


def test_arguments_are_checked_up_front(data, mixed):
    with pytest.raises(ValueError, match="on_error: expected one of 'skip', 'raise', got 'ignore'"):
        DocumentLoader(mixed, image_size=S, on_error="ignore")
    with pytest.raises(ValueError, match="rank, world_size"):
        DocumentLoader(mixed, image_size=S, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start"):
        DocumentLoader(mixed, image_size=S, start=-1)
    with pytest.raises(ValueError, match="paths_or_globs"):
        DocumentLoader(str(data / "*.nothing"), image_size=S)
    with pytest.raises(ValueError, match="paths_or_globs"):
        DocumentLoader(data / "red.png", image_size=S)
    with pytest.raises(ValueError, match="image_size"):
        DocumentLoader(mixed, image_size=0)
    # images would become inf or NaN
    for std in (0, -0.5, (0.5, 0.0, 0.5), float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^std: expected finite values > 0"):
            DocumentLoader(mixed, image_size=S, std=std)
    for mean in (float("nan"), (0.5, float("inf"), 0.5)):
        with pytest.raises(ValueError, match=r"^mean: expected finite values"):
            DocumentLoader(mixed, image_size=S, mean=mean)
    # a directory or a glob stands for its .jsonl files and shards, sorted
    assert DocumentLoader(data, image_size=S).files == [str(p) for p in mixed]
    assert DocumentLoader(str(data / "*.tar"), image_size=S).files == [str(mixed[1])]


def test_bad_record_str_names_the_place():
    assert str(BadRecord("a.jsonl", 3, None, "empty text")) == "a.jsonl:3: empty text"
    assert str(BadRecord("s.tar", None, "k", "x")) == "s.tar[k]: x"


# --- batches -------------------------------------------------------------------------------------


def test_jsonl_to_collated_batches_round_trip(data):
    path = write_jsonl(data / "d.jsonl", [
        {"text": "<image> red . <image> clip", "media": ["red.png", ["clip/0.png", "clip/1.png"]]},
        {"text": "<image> blue", "media": ["blue.jpg"]},
        doc_record(2),
    ])
    tok = WordTokenizer()
    tok("<image>")  # give the marker an id first, as a real tokenizer would have it
    got = list(batches(DocumentLoader(path, image_size=S), tok, batch_size=2))
    assert len(got) == 2
    first = got[0]
    assert first["pixel_values"].shape == (2, 2, 2, 3, S, S)  # [B, M, F, C, H, W]
    assert first["frame_mask"].tolist() == [[[True, False], [True, True]], [[True, False], [False, False]]]
    assert first["pixel_values"][1, 1].eq(0).all()  # padding media are zeros
    assert first["input_ids"].shape == first["labels"].shape == (2, 6)  # 5 words + eos
    assert first["labels"][0, 0] == -100 and first["labels"][0, 1] == tok.vocab["red"]
    assert got[1]["pixel_values"].shape == (1, 1, 1, 3, S, S)  # the last, smaller batch


def test_batches_over_epochs_and_forever(data, mixed):
    loader = DocumentLoader(mixed, image_size=S)  # 10 good documents
    tok = WordTokenizer()
    assert [len(b["input_ids"]) for b in batches(loader, tok, 4, epochs=2)] == [4, 4, 4, 4, 4]
    forever = batches(loader, tok, 3, epochs=None)
    assert sum(len(next(forever)["input_ids"]) for _ in range(7)) == 21  # past two whole passes
    all_bad = DocumentLoader(write_jsonl(data / "bad.jsonl", ["{"]), image_size=S)
    with pytest.raises(ValueError, match="no document"):
        next(batches(all_bad, tok, 2, epochs=None))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(loader, tok, 0))
