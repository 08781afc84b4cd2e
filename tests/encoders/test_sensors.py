import numpy as np
import pytest
import torch

from multisense.encoders import (
    ENCODERS,
    AudioEncoder,
    ForceTorqueEncoder,
    LogMelSpectrogram,
    TactileEncoder,
    VisionEncoder,
    build_encoder,
    get_encoder,
)


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request):
    torch.manual_seed(0)
    return build_encoder(request.param, dim=32).eval()


def test_every_encoder_declares_its_rate_and_layout():
    assert set(ENCODERS) >= {"vision", "tactile", "force_torque", "audio"}
    for name, cls in ENCODERS.items():
        assert cls.name == name and isinstance(cls.layout, str) and cls.layout
        assert cls.sample_rate is None or cls.sample_rate > 0


def test_tokens_and_mask_follow_the_protocol(encoder):
    inputs = type(encoder).example(n=3)
    out = encoder(**inputs)
    N, S, D = out.tokens.shape
    assert N == 3 and D == encoder.dim == 32 and S >= 1
    assert torch.isfinite(out.tokens).all()
    assert out.mask is not None and out.mask.shape == (N, S) and out.mask.dtype == torch.bool and out.mask.all()


def test_a_stream_with_no_real_sample_is_masked_out_whole(encoder):
    inputs = type(encoder).example(n=2)
    inputs["mask"] = inputs["mask"].clone()
    inputs["mask"][1] = False
    out = encoder(**inputs)
    assert out.mask[0].all() and not out.mask[1].any()
    assert torch.isfinite(out.tokens).all()


def test_a_wrong_shape_names_the_argument(encoder):
    inputs = type(encoder).example(n=2)
    first = next(iter(inputs))
    inputs["mask"] = inputs["mask"][:, :1] if inputs["mask"].shape[1] > 1 else inputs["mask"][:1]
    with pytest.raises(ValueError, match="mask"):
        encoder(**inputs)
    with pytest.raises((ValueError, TypeError), match=first):
        encoder(**{**type(encoder).example(n=2), first: torch.zeros(2)})


def test_unknown_encoder_names_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'tactile'"):
        get_encoder("tactle")


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_force_torque_is_causal_and_unchanged_by_right_padding(kind):
    torch.manual_seed(0)
    enc = ForceTorqueEncoder(dim=16, kind=kind).eval()
    x = ForceTorqueEncoder.example(n=2, seconds=0.2)
    ref = enc(**x)
    later = x["wrench"].clone()
    later[:, 60:] = torch.randn_like(later[:, 60:]) * 50  # samples after 60 change
    out = enc(later, x["mask"])
    k = 60 // enc.stride + (1 if 60 % enc.stride else 0)  # tokens whose window ends before sample 60
    torch.testing.assert_close(out.tokens[:, :k], ref.tokens[:, :k])
    padded = torch.cat((x["wrench"], torch.randn(2, 37, 6) * 100), dim=1)
    mask = torch.cat((x["mask"], torch.zeros(2, 37, dtype=torch.bool)), dim=1)
    out = enc(padded, mask)
    n = ref.tokens.shape[1]
    torch.testing.assert_close(out.tokens[:, :n], ref.tokens)
    assert out.mask[:, :n].all() and not out.mask[:, n:].any()


def test_log_mel_equals_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    ours = LogMelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40, log=False)
    power = ours(torch.from_numpy(wave)[None].double())[0].numpy()
    ref = librosa.feature.melspectrogram(y=wave.astype(np.float64), sr=16000, n_fft=400, hop_length=160, n_mels=40)
    np.testing.assert_allclose(power, ref, rtol=1e-6, atol=1e-9)
    db = LogMelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)(torch.from_numpy(wave)[None])
    np.testing.assert_allclose(db[0].numpy(), librosa.power_to_db(ref, ref=1.0, top_db=None), atol=1e-3)


def test_log_mel_is_differentiable_and_batched():
    spec = LogMelSpectrogram()
    wave = (torch.randn(3, 4000) * 0.1).requires_grad_(True)
    out = spec(wave)
    torch.testing.assert_close(out[1], spec(wave[1:2].detach())[0])
    out.sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_tactile_background_subtraction_sees_only_the_change():
    torch.manual_seed(0)
    enc = TactileEncoder(dim=16).eval()
    x = TactileEncoder.example(n=2)
    still = {"frames": x["reference"][:, None].expand_as(x["frames"]).clone(), "mask": x["mask"],
             "reference": x["reference"]}
    other = torch.rand_like(x["reference"])  # another pad texture, no contact either
    still_other = {"frames": other[:, None].expand_as(x["frames"]).clone(), "mask": x["mask"], "reference": other}
    torch.testing.assert_close(enc(**still).tokens, enc(**still_other).tokens)
    with pytest.raises(ValueError, match="reference"):
        enc(x["frames"], x["mask"])


def test_audio_refuses_a_clip_shorter_than_a_token():
    with pytest.raises(ValueError, match="waveform: 100 samples"):
        AudioEncoder(dim=16)(torch.zeros(1, 100))


@pytest.mark.parametrize("cls", [TactileEncoder, VisionEncoder])
def test_frames_marked_missing_are_not_encoded(cls):
    torch.manual_seed(0)
    enc = cls(dim=16).eval()
    x = cls.example(n=2, seconds=0.1)
    x["mask"] = x["mask"].clone()
    x["mask"][0, 3:] = False
    ref = enc(**x)
    x["frames"] = x["frames"].clone()
    x["frames"][0, 3:] = float("nan")  # whatever a missing frame holds never reaches the tokens
    out = enc(**x)
    assert torch.isfinite(out.tokens).all()
    torch.testing.assert_close(out.tokens, ref.tokens)


def test_audio_refuses_integer_and_int16_scaled_samples():
    loud = torch.randn(1, 4000) * 3000
    with pytest.raises(ValueError, match=r"waveform: samples up to .* in \[-1, 1\]"):
        AudioEncoder(dim=16)(loud)
    with pytest.raises(ValueError, match="waveform: torch.int16 samples"):
        AudioEncoder(dim=16)(loud.to(torch.int16))


def test_a_tactile_stream_longer_than_its_table_names_what_to_change():
    encoder = TactileEncoder(dim=16, depth=1, max_frames=8)
    with pytest.raises(ValueError, match=r"frames: 9 frames .* max_frames=8; build it with a larger max_frames"):
        encoder(**TactileEncoder.example(1, 9 / 60))
