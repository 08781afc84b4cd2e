import pytest
import torch

from multisense import AutoModel, FusionConfig, FusionModel
from multisense.encoders import AudioEncoder, ForceTorqueEncoder, TactileEncoder, VisionEncoder
from tests.nn.test_perceiver import reference_weights

SENSORS = {"camera": {"encoder": "vision", "dim": 16, "depth": 1},
           "touch": {"encoder": "tactile", "dim": 16, "depth": 1, "num_tokens": 2},
           "wrist": {"encoder": "force_torque", "dim": 16},
           "microphone": {"encoder": "audio", "dim": 16, "optional": True},
           }


def model(**kw):
    torch.manual_seed(0)
    cfg = FusionConfig(sensors=SENSORS, dim=32, num_latents=4, depth=1, heads=2, dim_head=8, cross_dim_head=8,
                       class_names=["smooth", "brick", "grass", "gravel"], **kw)
    return FusionModel(cfg).eval()


def inputs(n=2):
    return {"camera": VisionEncoder.example(n, 0.1), "touch": TactileEncoder.example(n, 0.1),
            "wrist": ForceTorqueEncoder.example(n, 0.2), "microphone": AudioEncoder.example(n, 0.2)}


def test_forward_gives_class_logits_and_a_loss():
    m = model()
    out = m(inputs(), labels=torch.tensor([0, 3]), return_attention=True)
    assert out.latents.shape == (2, 4, 32) and out.logits.shape == (2, 4)
    assert torch.isfinite(out.loss) and set(out.attention) == set(SENSORS)
    torch.testing.assert_close(sum(out.attention.values()), torch.ones(2, 4))


def test_a_missing_optional_sensor_equals_the_sensor_masked_out():
    m = model()
    x = inputs()
    without = {k: v for k, v in x.items() if k != "microphone"}
    masked = dict(x, microphone={**x["microphone"], "mask": torch.zeros_like(x["microphone"]["mask"])})
    torch.testing.assert_close(m(without).logits, m(masked).logits, rtol=1e-5, atol=1e-6)


def test_sensors_are_matched_by_name_and_errors_name_them():
    m = model()
    x = inputs()
    torch.testing.assert_close(m(dict(reversed(list(x.items())))).logits, m(x).logits)
    with pytest.raises(ValueError, match="'sonar'"):
        m({**x, "sonar": x["wrist"]})
    strict = FusionModel(FusionConfig(sensors={"touch": {"encoder": "tactile", "dim": 16, "optional": False},
                                               "wrist": {"encoder": "force_torque", "dim": 16}}, dim=32))
    with pytest.raises(ValueError, match="'touch' is missing"):
        strict({"wrist": x["wrist"]})
    with pytest.raises(ValueError, match="did you mean 'tactile'"):
        FusionModel(FusionConfig(sensors={"touch": {"encoder": "tactle"}}))


def test_modality_dropout_drops_whole_sensors_in_training_only_and_never_all():
    m = model(modality_dropout=0.7)
    x = inputs(n=64)
    masks = m.encode(x)[1]
    m.train()
    dropped = m.drop_sensors(masks, generator=torch.Generator().manual_seed(0))
    kept = torch.stack([d.any(-1) for d in dropped.values()], -1)  # [B, sensors]
    assert kept.any(-1).all() and (~kept).any()
    for name in masks:  # whole sensors: a sample keeps all of a sensor's tokens or none
        assert torch.equal(dropped[name].all(-1), dropped[name].any(-1))
    m.eval()
    assert all(torch.equal(a, b) for a, b in zip(m.drop_sensors(masks).values(), masks.values()))


def test_save_load_round_trip_through_automodel(tmp_path):
    m = model()
    x = inputs()
    m.save_pretrained(tmp_path / "fusion")
    again = AutoModel.from_pretrained(tmp_path / "fusion")
    assert isinstance(again, FusionModel) and again.config == m.config
    torch.testing.assert_close(again.eval()(x).logits, m(x).logits, rtol=0, atol=0)


def test_late_fusion_is_a_baseline_over_the_same_sensors_and_survives_a_missing_one():
    torch.manual_seed(0)
    cfg = FusionConfig(sensors=SENSORS, dim=32, class_names=["a", "b", "c"], fuse="late")
    model = FusionModel(cfg).eval()
    assert model.perceiver is None and not any(k.startswith("perceiver.") for k in model.state_dict())
    inputs = {name: type(model.encoders[name]).example(2) for name in SENSORS}
    full = model(inputs, labels=torch.tensor([0, 2]))
    assert full.logits.shape == (2, 3) and full.loss.isfinite()
    without = model({k: v for k, v in inputs.items() if k != "microphone"})
    masked = dict(inputs, microphone={**inputs["microphone"], "mask": torch.zeros_like(inputs["microphone"]["mask"])})
    torch.testing.assert_close(without.logits, model(masked).logits)  # missing = every token masked
    with pytest.raises(ValueError, match="no attention"):
        model(inputs, return_attention=True)
    with pytest.raises(ValueError, match="fuse"):
        FusionModel(FusionConfig(sensors=SENSORS, fuse="early"))


@pytest.mark.parametrize("balance", [False, True])
def test_attention_over_time_is_the_full_attention_summed_over_each_time_slice(balance):
    m = model(balance_modalities=balance)
    x = inputs(n=3)
    x["wrist"]["mask"][1, x["wrist"]["mask"].shape[1] // 3:] = False  # sample 1: the wrist's first third
    x["microphone"]["mask"][2] = False  # sample 2: no microphone
    tokens, masks, positions = m.encode(x)
    weights = reference_weights(m.perceiver, tokens, masks, positions)  # one softmax over the whole window
    _, shares = m.fuse(x, return_attention=True)
    names = m.perceiver.names
    # the default window: the longest stream's, 0.2 s
    torch.testing.assert_close(m.attention_over_time(x, bins=3), m.attention_over_time(x, bins=3, seconds=0.2))
    window = 0.21  # slice edges away from every token's time
    for bins in (1, 3, 5):
        got = m.attention_over_time(x, bins=bins, seconds=window)
        assert got.shape == (3, bins, len(names))
        edges = torch.linspace(0, window, bins + 1)
        expected = torch.zeros(3, bins, len(names))
        for j, n in enumerate(names):
            t = (positions[n][..., 0] + 1) / 2 * m.config.max_seconds  # back to seconds
            for b in range(bins):
                inside = (t >= edges[b]) & ((t < edges[b + 1]) | (b == bins - 1))
                expected[:, b, j] = (weights[n] * inside[:, None, None]).sum(-1).mean((1, 2))
        torch.testing.assert_close(got, expected)
        # every slice and sensor together: the whole attention; each sensor over its slices: its share
        torch.testing.assert_close(got.sum((1, 2)), torch.ones(3))
        torch.testing.assert_close(got.sum(1), torch.stack([shares[n].mean(-1) for n in names], -1))


# ---------------------------------------------------------------------------------- positions are times


def episode(seconds=3.0, seed=0):
    return {"camera": VisionEncoder.example(1, seconds, seed=seed), "touch": TactileEncoder.example(1, seconds, seed=seed),
            "wrist": ForceTorqueEncoder.example(1, seconds, seed=seed),
            "microphone": AudioEncoder.example(1, seconds, seed=seed)}


def test_dropping_a_camera_frame_leaves_every_other_frames_position():
    m = model()
    x = inputs()
    _, _, before = m.encode(x)
    x["camera"]["mask"] = x["camera"]["mask"].clone()
    x["camera"]["mask"][0, 0] = False  # sample 0 loses its first frame
    _, masks, after = m.encode(x)
    for name in SENSORS:
        assert torch.equal(after[name], before[name]), name
    assert not masks["camera"][0].all() and masks["camera"][1].all()


def test_a_window_cut_from_an_episode_keeps_its_tokens_positions():
    m = model()
    full = episode(3.0)
    cut = {"camera": {k: v[:, :45] for k, v in full["camera"].items()},  # the first 1.5 s
           "touch": {**{k: full["touch"][k][:, :90] for k in ("frames", "mask")}, "reference": full["touch"]["reference"]},
           "wrist": {k: v[:, :750] for k, v in full["wrist"].items()},
           "microphone": {k: v[:, :24000] for k, v in full["microphone"].items()}}
    _, _, whole = m.encode(full)
    _, _, part = m.encode(cut)
    for name in ("camera", "wrist", "microphone"):
        kept = part[name].shape[1]
        assert kept < whole[name].shape[1]
        torch.testing.assert_close(part[name], whole[name][:, :kept], rtol=0, atol=1e-6)
    # a tactile token summarises its whole stream: the middle of the first 1.5 s, not of the 3 s
    assert float(part["touch"].max()) < float(whole["touch"].min())
    # one fixed window: 0 s at -1, max_seconds at +1, the same scale for every sample and window
    torch.testing.assert_close(whole["camera"][0, ::16, 0], torch.arange(90) / 30.0 * (2 / 3.0) - 1)


def test_a_stream_at_another_rate_is_refused_naming_the_sensor_and_both_rates():
    m = model()
    x = inputs()
    with pytest.raises(ValueError, match=r"sensors\['wrist'\]: sample_rate: a 1000 Hz stream, but the force_torque "
                                         r"encoder takes 500 Hz"):
        m({**x, "wrist": {**x["wrist"], "sample_rate": 1000}})
    with pytest.raises(ValueError, match=r"sensors\['microphone'\]: sample_rate: a 44100 Hz stream, but the audio "
                                         r"encoder takes 16000 Hz"):
        m({**x, "microphone": {**x["microphone"], "sample_rate": 44100.0}})
    declared = {**x, "wrist": {**x["wrist"], "sample_rate": 500}, "microphone": {**x["microphone"], "sample_rate": 16000}}
    torch.testing.assert_close(m(declared).logits, m(x).logits)


def test_a_token_past_the_window_is_refused():
    m = model(max_seconds=0.15)
    with pytest.raises(ValueError, match=r"sensors\['microphone'\]: tokens at up to 0.175 s, past max_seconds=0.15"):
        m(inputs())  # 0.2 s of audio: its last token at 0.175 s (the wrist's last, at 0.15 s, fits)
    with pytest.raises(ValueError, match="max_seconds"):
        model(max_seconds=0)
