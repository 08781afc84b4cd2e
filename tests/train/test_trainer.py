import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from multisense.config import load_config
from multisense.tokens import MEDIA_MARKER
from multisense.train import checkpoint as ckpt
from multisense.train.trainer import TrainConfig, resolve_preset, train
from tests.train.backbones import save_tiny_backbones

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def overrides(backbones, out, **extra) -> list[str]:
    lm, vision = backbones
    values = {"model.lm": lm, "model.vision": vision, "model.flamingo.num_latents": 4,
              "model.flamingo.resampler_depth": 1, "model.flamingo.resampler_heads": 2,
              "model.flamingo.resampler_dim_head": 8, "model.flamingo.xattn_heads": 2,
              "model.flamingo.xattn_dim_head": 8, "model.flamingo.ff_mult": 2, "model.flamingo.max_frames": 8,
              "data.task": "video", "data.task_args": "{frames: 4}", "data.max_shots": 1,
              "data.batch_size": 2, "optim.warmup_steps": 1, "optim.lr": 1e-2, "optim.gate_lr": 0.1,
              "train.steps": 4, "train.save_every": 2, "train.log_every": 1, "train.out_dir": out,
              "model.flamingo.standardize_media": True, "data.calibration_samples": 6,
              "train.progress": False, "train.device": "cpu"}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def config(backbones, out, **extra) -> TrainConfig:
    return load_config(TrainConfig, None, overrides(backbones, out, **extra))


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest(Path(out) / "checkpoints") / ckpt.WEIGHTS))


def test_config_errors_name_the_dotted_key_and_suggest_the_nearest(tmp_path):
    with pytest.raises(ValueError, match=r"'optim.lrr'.*did you mean 'optim.lr'"):
        load_config(TrainConfig, None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"'model.flamingo.num_latent'.*'model.flamingo.num_latents'"):
        load_config(TrainConfig, None, ["model.flamingo.num_latent=4"])
    with pytest.raises(ValueError, match=r"train.steps: expected int"):
        load_config(TrainConfig, None, ["train.steps=many"])
    cfg = load_config(TrainConfig, resolve_preset("video"), ["optim.lr=3e-4", "train.steps=7"])
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 7 and cfg.data.task == "video"
    assert cfg.model.flamingo.max_frames == 8  # the preset's nested dataclass is typed, not a dict
    with pytest.raises(FileNotFoundError, match="presets"):
        resolve_preset("no-such-preset")


def test_train_writes_checkpoints_logs_and_a_loadable_model(backbones, tmp_path):
    out = tmp_path / "run"
    summary = train(config(backbones, out))
    assert summary["steps"] == 4 and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-000002", "step-000004"]
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 5
    assert list((out / "logs").glob("events.out.tfevents.*"))
    from multisense import FlamingoModel

    model = FlamingoModel.from_pretrained(out / "model")
    # the run's tokenizer, its media marker included, beside the weights (what `multisense eval` reads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.convert_tokens_to_ids(MEDIA_MARKER) == model.config.media_token_id
    saved = final_weights(out)
    assert all(torch.equal(model.trainable_state_dict()[k], v) for k, v in saved.items())
    # media statistics were measured on the task's images (not left at the identity) and saved
    assert "media_std" in saved and not torch.equal(saved["media_std"], torch.ones_like(saved["media_std"]))


def test_every_row_logged_is_on_disk_when_a_checkpoint_is_written(backbones, tmp_path, monkeypatch):
    out, on_disk, save = tmp_path / "run", {}, ckpt.save

    def spy(directory, *, step, **kwargs):
        rows = (out / "logs" / "metrics.csv").read_text().splitlines()[1:]
        on_disk[step] = [int(r.split(",")[0]) for r in rows]
        return save(directory, step=step, **kwargs)

    monkeypatch.setattr(ckpt, "save", spy)
    train(config(backbones, out))  # 4 steps, a row each, a checkpoint every 2
    assert on_disk == {2: [1, 2], 4: [1, 2, 3, 4]}


def test_a_resume_replaces_the_rows_logged_after_its_checkpoint(backbones, tmp_path):
    out = tmp_path / "run"
    train(config(backbones, out))  # 4 steps, checkpoints at 2 and 4
    # as if killed after step 4 was logged but before its checkpoint was written
    shutil.rmtree(ckpt.latest(out / "checkpoints"))
    shutil.rmtree(out / "model")
    train(config(backbones, out))
    steps = [r.split(",")[0] for r in (out / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


# With a large eps Adam's update is lr * m / eps, linear in the gradient; with the default eps
# its first steps are nearly lr * sign(g), which turns float rounding in near-zero gradients
# into differences of 2 * lr. The comparisons below are about gradients, so they use a large eps.
LINEAR_ADAM = {"optim.eps": 1.0, "optim.lr": 1.0, "optim.gate_lr": 10.0}


def test_gradient_accumulation_equals_the_large_batch(backbones, tmp_path):
    train(config(backbones, tmp_path / "big", **{"data.batch_size": 4, "train.steps": 3, **LINEAR_ADAM}))
    train(config(backbones, tmp_path / "acc", **{"data.batch_size": 2, "train.grad_accum": 2, "train.steps": 3,
                                                 **LINEAR_ADAM}))
    big, acc = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    assert big.keys() == acc.keys()
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6, msg=k)


def test_activation_checkpointing_and_z_loss_train(backbones, tmp_path):
    plain = train(config(backbones, tmp_path / "a", **{"train.steps": 2}))
    ckpted = train(config(backbones, tmp_path / "b", **{"train.steps": 2, "train.activation_checkpointing": True}))
    assert ckpted["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-5)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # Adam's first steps are about lr * sign(g): a z-loss large enough to flip some signs
    z = train(config(backbones, tmp_path / "z", **{"train.steps": 2, "train.z_loss": 1.0}))
    zw = final_weights(tmp_path / "z")
    assert any(not torch.equal(zw[k], a[k]) for k in a)  # the z-loss term changed the updates
    assert z["history"][-1]["z_loss"] > 0
    bf16 = train(config(backbones, tmp_path / "bf16", **{"train.steps": 2, "train.precision": "bf16"}))
    assert bf16["final_loss"] == pytest.approx(plain["final_loss"], rel=5e-2)  # autocast: close, not equal


def _command(backbones, out, **extra) -> list[str]:
    return [sys.executable, "-m", "multisense", "train", *overrides(backbones, out, **extra)]


def _env() -> dict:
    # src first: the subprocesses import this checkout's code, whatever else is installed
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def _kill_after_first_checkpoint_then_resume(backbones, tmp_path, **extra) -> dict:
    """Train `whole` uninterrupted; train `killed`, SIGKILL it once its first checkpoint exists,
    run the same command again (train.resume=auto). Returns the manifest of the checkpoint the
    kill left (read before the resume, whose keep_last may delete it)."""
    subprocess.run(_command(backbones, tmp_path / "whole", **extra), check=True, env=_env(), capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_command(backbones, run, **extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while ckpt.latest(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest(run / "checkpoints")
    assert killed_at is not None and killed_at.name != f"step-{extra['train.steps']:06d}", "not killed mid-way"
    manifest = json.loads((killed_at / ckpt.MANIFEST).read_text())
    # every row logged up to the checkpoint survived the SIGKILL
    logged = [int(r.split(",")[0]) for r in (run / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert logged[:manifest["step"]] == list(range(1, manifest["step"] + 1))
    resumed = subprocess.run(_command(backbones, run, **extra), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return manifest


def _assert_same_weights(a, b) -> None:
    whole, resumed = final_weights(a), final_weights(b)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_killed_run_resumes_to_the_same_weights(backbones, tmp_path):
    _kill_after_first_checkpoint_then_resume(backbones, tmp_path, **{"train.steps": 30, "train.save_every": 3})
    _assert_same_weights(tmp_path / "whole", tmp_path / "killed")


def write_documents(root: Path, records: list) -> Path:
    """A JSONL file of `records` (dicts, or raw lines), beside one tiny PNG per colour they use."""
    from PIL import Image

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
    root.mkdir(parents=True, exist_ok=True)
    for name, rgb in colours.items():
        Image.new("RGB", (4, 4), rgb).save(root / f"{name}.png")
    path = root / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# 6 records, the second bad (its image is missing): 5 documents an epoch. At batch 2 and
# save_every 3, every checkpoint falls inside an epoch past the first (step 3: epoch 1 after its
# first record, so the resume meets the bad record first), and batches span epochs.
DOCUMENTS = [{"text": "<image> red circle", "media": ["red.png"]},
             {"text": "<image> green square", "media": ["missing.png"]},
             {"text": "<image> blue triangle", "media": ["blue.png"]},
             {"text": "<image> yellow cross", "media": ["yellow.png"]},
             {"text": "<image> green circle . <image> red square", "media": ["green.png", "red.png"]},
             {"text": "<image> blue cross", "media": ["blue.png"]}]


def file_data(path: Path) -> dict:
    return {"data.task": "null", "data.task_args": "{}", "data.paths": f"[{path}]"}


def test_a_killed_file_data_run_resumes_in_its_second_epoch_to_the_same_weights(backbones, tmp_path):
    data = write_documents(tmp_path / "data", DOCUMENTS)
    extra = {**file_data(data), "train.steps": 12, "train.save_every": 3}
    (position,) = _kill_after_first_checkpoint_then_resume(backbones, tmp_path, **extra)["data_position"]
    assert position["epoch"] >= 1 and position["position"] > 0  # resumed past the first epoch, mid-way
    _assert_same_weights(tmp_path / "whole", tmp_path / "killed")


def test_a_corrupt_or_truncated_checkpoint_is_named_and_not_loaded(backbones, tmp_path):
    out = tmp_path / "run"
    train(config(backbones, out, **{"train.steps": 2}))
    last = ckpt.latest(out / "checkpoints")
    weights = last / ckpt.WEIGHTS
    original = weights.read_bytes()
    data = bytearray(original)
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors is corrupt"):
        train(config(backbones, out, **{"train.steps": 4}))
    assert ckpt.latest(out / "checkpoints") == last  # nothing was trained or written from it
    weights.write_bytes(original)
    ckpt.verify(last)
    state = last / ckpt.STATE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"state.pt is truncated"):
        ckpt.load(last)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process_with_the_doubled_batch(backbones, tmp_path, strategy):
    extra = {"train.steps": 3, **LINEAR_ADAM}
    single = subprocess.run(_command(backbones, tmp_path / "one", **{**extra, "data.batch_size": 4}), env=_env(),
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    two_procs = {**extra, "data.batch_size": 2, "train.distributed": strategy}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "multisense", "train", *overrides(backbones, tmp_path / "two", **two_procs)]
    double = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)


def test_each_process_saves_and_resumes_its_own_place_in_the_files(backbones, tmp_path):
    data = write_documents(tmp_path / "data", DOCUMENTS)
    extra = {**file_data(data), "train.steps": 2, "train.save_every": 2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "multisense", "train", *overrides(backbones, tmp_path / "two", **extra)]
    two = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    manifest = json.loads((ckpt.latest(tmp_path / "two" / "checkpoints") / ckpt.MANIFEST).read_text())
    # rank 0 owns records 0, 2, 4 (3 documents an epoch), rank 1 records 1 (bad), 3, 5 (2): after
    # 4 documents each, rank 0 is past record 0 of its second epoch, rank 1 past record 5 of it
    assert manifest["data_position"] == [{"epoch": 1, "position": 1}, {"epoch": 1, "position": 6}]
    # one process cannot continue two processes' shares of the files
    with pytest.raises(ValueError, match=r"written by 2 processes, resumed by 1.*--nproc_per_node 2"):
        train(config(backbones, tmp_path / "two", **{**extra, "train.steps": 4}))
    assert ckpt.latest(tmp_path / "two" / "checkpoints").name == "step-000002"


@pytest.fixture
def no_backbones(monkeypatch):
    """Fail the test if train() gets as far as loading the backbones."""
    from multisense.train import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the backbones were loaded")

    monkeypatch.setattr(trainer, "build_model", refuse)


def test_resume_never_refuses_an_out_dir_that_holds_a_run(backbones, tmp_path, no_backbones):
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "metrics.csv").write_text("step,loss\n1,2.0\n")
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=rf"train.out_dir {out}: already holds a run.*"
                                              r"a new train.out_dir, or train.resume=auto"):
        train(config(backbones, out, **{"train.resume": "never"}))
    assert (out / "logs" / "metrics.csv").read_text() == "step,loss\n1,2.0\n"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "logs"]


INVALID = [
    ({"model.flamingo.mode": "windw:2"}, r"model.flamingo.mode: expected one of 'immediate', 'all_previous'"),
    ({"model.flamingo.num_latents": 0}, r"model.flamingo.num_latents: expected a number >= 1, got 0"),
    ({"train.precision": "fp16"}, r"train.precision: expected one of 'fp32', 'bf16', 'auto', got 'fp16'"),
    ({"data.on_error": "ignore"}, r"data.on_error: expected one of 'skip', 'raise', got 'ignore'"),
    ({"train.distributed": "foo"}, r"train.distributed: expected one of 'ddp', 'fsdp2', got 'foo'"),
    ({"train.device": "tpu"}, r"train.device: expected one of 'auto', 'cpu', 'cuda', got 'tpu'"),
    ({"train.resume": "runs/nowhere"}, r"train.resume: expected 'auto', 'never' or a checkpoint directory"),
    ({"train.steps": -1}, r"train.steps: expected a number >= 1, got -1"),
    ({"data.batch_size": 0}, r"data.batch_size: expected a number >= 1, got 0"),
    ({"train.grad_accum": 0}, r"train.grad_accum: expected a number >= 1, got 0"),
    ({"train.save_every": 0}, r"train.save_every: expected a number >= 1, got 0"),
    ({"optim.lr": -1e-3}, r"optim.lr: expected a number > 0, got -0.001"),
    ({"optim.betas": "[0.9, 1.5]"}, r"optim.betas\[1\]: expected a number >= 0 and < 1, got 1.5"),
    ({"optim.eps": "nan"}, r"optim.eps: expected a number > 0, got nan"),
    ({"data.task": "vidoe"}, r"data.task='vidoe'.*unknown task 'vidoe'; did you mean 'video'"),
    ({"data.task_args": "{fraems: 4}"}, r"data.task='video', data.task_args=\{'fraems': 4\}.*fraems"),
    ({"data.task": "null"}, r"data: set data.task .* or data.paths"),
    ({"data.paths": "[a.jsonl]"}, r"data: set data.task .* or data.paths .*not both"),
    ({"data.task": "null", "data.paths": "[nowhere/*.jsonl]"}, r"data.paths: 'nowhere/\*.jsonl' matches no"),
    ({"data.calibration_samples": 1}, r"data.calibration_samples: expected a number >= 2, got 1"),
    ({"data.std": 0}, r"data.std: expected finite values > 0, got 0"),
    ({"data.mean": "[0.5, 0.5]"}, r"data.mean: expected a float or 3 per-channel values"),
    ({"check.shots": "[0, -2]", "check.min_gain": 0.2}, r"check.shots\[1\]: expected a number >= 0, got -2"),
    ({"check.shots": "[8]", "check.min_gain": 0.2}, r"check.min_gain: needs at least two check.shots"),
    ({"check.shots": "[0, 8]"}, r"check.shots: set, but neither check.min_accuracy nor check.min_gain"),
    ({"check.shots": "[8]", "check.min_accuracy": 1.5}, r"check.min_accuracy: expected a number >= 0 and <= 1"),
]


@pytest.mark.parametrize("values, message", INVALID, ids=[", ".join(v) for v, _ in INVALID])
def test_an_invalid_value_is_named_before_anything_loads_or_is_written(backbones, tmp_path, no_backbones,
                                                                        values, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(config(backbones, out, **values))
    assert not out.exists()


def test_a_tokenizer_that_is_no_local_directory_is_named_before_anything_loads(backbones, tmp_path, no_backbones):
    with pytest.raises(FileNotFoundError, match=r"model.tokenizer: expected a local directory.*'no/such/tok'"):
        train(config(backbones, tmp_path / "run", **{"model.tokenizer": "no/such/tok"}))


def test_distillation_on_files_is_refused_before_anything_loads(backbones, tmp_path, no_backbones):
    data = write_documents(tmp_path / "data", DOCUMENTS)
    with pytest.raises(ValueError, match=r"train.distill_words: needs data.task"):
        train(config(backbones, tmp_path / "run", **{**file_data(data), "train.distill_words": 1.0}))


def test_an_image_size_the_vision_encoder_was_not_built_for_is_named_before_training(backbones, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"data.image_size: 48, but the vision encoder .* takes 32-pixel images"):
        train(config(backbones, out, **{"data.image_size": 48}))
    assert not out.exists()


def test_data_mean_and_std_normalise_the_images_read_from_files(backbones, tmp_path):
    from multisense.train import distributed
    from multisense.train.trainer import file_loader

    data = write_documents(tmp_path / "data", DOCUMENTS[:1])  # one red image
    default = config(backbones, tmp_path / "run", **file_data(data))
    assert next(iter(file_loader(default.data, distributed.Env()))).media[0][0, :, 0, 0].tolist() == [1, -1, -1]
    mine = config(backbones, tmp_path / "run", **file_data(data), **{"data.mean": "[0, 0.5, 1]", "data.std": 0.5})
    assert next(iter(file_loader(mine.data, distributed.Env()))).media[0][0, :, 0, 0].tolist() == [2, -1, -2]


def test_a_bad_record_is_reported_once_by_a_run_that_calibrates_on_the_files(backbones, tmp_path, caplog):
    import logging

    data = write_documents(tmp_path / "data", DOCUMENTS)
    with caplog.at_level(logging.WARNING, logger="multisense.data"):
        train(config(backbones, tmp_path / "run", **file_data(data), **{"train.steps": 4}))  # 8 documents
    assert [r.getMessage() for r in caplog.records if "missing.png" in r.getMessage()] == \
        [f"{data}:2: missing image 'missing.png' ({data.parent / 'missing.png'}) (skipped)"]


def test_a_dual_tower_clip_checkpoint_loads_its_vision_tower(tmp_path):
    import transformers as tf

    from multisense.encoders import load_vision_encoder

    clip = tf.CLIPModel(tf.CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "vocab_size": 20},
                                      vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16,
                                                     "intermediate_size": 32, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2}, projection_dim=8))
    clip.save_pretrained(tmp_path)
    vision = load_vision_encoder(tmp_path)
    assert isinstance(vision, tf.CLIPVisionModel)
    assert vision(pixel_values=torch.zeros(1, 3, 16, 16)).last_hidden_state.shape == (1, 5, 16)


def test_too_few_calibration_samples_is_named(backbones, tmp_path):
    with pytest.raises(ValueError, match="data.calibration_samples"):
        train(config(backbones, tmp_path / "run", **{"data.calibration_samples": 0}))


def _checked(backbones, out, **check) -> TrainConfig:
    # the video task: 4 answers, 0-shot episodes; 4 steps leave the model near chance
    return config(backbones, out, **{"check.shots": "[0]", "check.samples": 8, **check})


def test_a_checked_run_that_misses_its_check_says_so_and_writes_no_model(backbones, tmp_path):
    from multisense.eval.checks import held_out_check
    from multisense.train.trainer import CheckFailed

    out = tmp_path / "run"
    with pytest.raises(CheckFailed, match=r"accuracy at 0 shots 0\.\d+ < check.min_accuracy 1\.0.*no model/ was "
                                          r"written.*another train.seed"):
        train(_checked(backbones, out, **{"check.min_accuracy": 1.0}), check=held_out_check)
    report = json.loads((out / "check.json").read_text())
    assert report["passed"] is False and report["chance"] == 0.25 and report["samples"] == 8
    assert not (out / "model").exists()
    assert ckpt.latest(out / "checkpoints").name == "step-000004"  # the run itself is kept


def test_a_checked_run_that_passes_writes_its_model_and_report(backbones, tmp_path):
    from multisense.eval.checks import held_out_check

    out = tmp_path / "run"
    summary = train(_checked(backbones, out, **{"check.min_accuracy": 0.0}), check=held_out_check)
    report = json.loads((out / "check.json").read_text())
    assert report["passed"] is True and summary["check"] == report
    assert 0.0 <= report["accuracy"]["0"] <= 1.0 and (out / "model" / "config.json").is_file()


def test_check_task_args_override_the_training_task_for_the_check_only(backbones, tmp_path):
    from multisense.eval.checks import held_out_check

    out = tmp_path / "run"
    cfg = _checked(backbones, out, **{"data.task_args": "{frames: 4, lead: 1.0}", "check.task_args": "{lead: 0.0}",
                                      "check.min_accuracy": 0.0})
    summary = train(cfg, check=held_out_check)
    assert summary["check"]["task_args"] == {"frames": 4, "lead": 0.0}  # checked on the task proper
    assert cfg.data.task_args == {"frames": 4, "lead": 1.0}  # trained with the aid
    with pytest.raises(ValueError, match=r"check.task_args=\{'lead': 2.0\}.*lead: expected a fraction"):
        train(_checked(backbones, tmp_path / "bad", **{"check.task_args": "{lead: 2.0}", "check.min_accuracy": 0.5}),
              check=held_out_check)
    assert not (tmp_path / "bad").exists()  # named before anything is written


def test_a_check_needs_a_check_function(backbones, tmp_path, no_backbones):
    with pytest.raises(ValueError, match=r"check.shots: set, but train\(\) was given no check function"):
        train(_checked(backbones, tmp_path / "run", **{"check.min_accuracy": 0.5}))


def test_the_fewshot_preset_checks_that_it_learned_in_context():
    cfg = load_config(TrainConfig, resolve_preset("fewshot"), [])
    assert cfg.check.shots == [0, 8] and cfg.check.min_gain == 0.2 and cfg.check.min_accuracy == 0.8


def test_the_video_preset_trains_and_is_checked_on_the_task_proper():
    cfg = load_config(TrainConfig, resolve_preset("video"), [])
    assert cfg.data.task_args["lead"] == 0.0 and cfg.train.distill_words == 1.0  # no position hint; in words
    assert cfg.check.shots == [0] and cfg.check.min_accuracy == 0.9 and cfg.check.task_args == {"lead": 0.0}


def test_samples_that_do_not_fit_the_lm_are_refused_before_a_step(backbones, tmp_path):
    """LLaVA over 5 clips of 8 frames of 16 tokens (640 > the LM's 512 positions): the budget would
    drop the media and with them the labels; the run says what does not fit, by how much."""
    cfg = config(backbones, tmp_path / "run", **{"model.family": "llava", "data.task_args": "{frames: 8}",
                                                  "data.max_shots": 4, "model.flamingo.standardize_media": False})
    with pytest.raises(ValueError, match=r"do not fit the LM's context of 512 tokens.*over"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
