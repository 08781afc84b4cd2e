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


# ---------------------------------------------------------------------------------- token times


def test_every_token_has_a_time_in_seconds_within_its_stream(encoder):
    inputs = type(encoder).example(n=2, seconds=0.5)
    out = encoder(**inputs)
    assert out.times is not None and out.times.shape == out.mask.shape and out.times.is_floating_point()
    assert out.duration == pytest.approx(0.5)
    assert (out.times >= 0).all() and (out.times < out.duration).all()
    assert (out.times[:, 1:] >= out.times[:, :-1]).all()  # tokens in time order
    torch.testing.assert_close(out.times[0], out.times[1])  # from the rate, not the sample


def test_token_times_do_not_depend_on_which_samples_are_real(encoder):
    inputs = type(encoder).example(n=2, seconds=0.5)
    full = encoder(**inputs).times
    inputs["mask"] = inputs["mask"].clone()
    inputs["mask"][0, 1] = False  # one frame or sample dropped
    inputs["mask"][1, inputs["mask"].shape[1] // 2:] = False  # the stream ends half way
    assert torch.equal(encoder(**inputs).times, full)


def test_token_times_follow_each_streams_rate_and_grouping():
    torch.manual_seed(0)
    vision = VisionEncoder(dim=16, depth=1).eval()
    out = vision(**VisionEncoder.example(1, 0.2))  # 6 frames at 30 Hz, 16 patches each
    torch.testing.assert_close(out.times[0], (torch.arange(6) / 30.0).repeat_interleave(16))
    wrist = ForceTorqueEncoder(dim=16).eval()  # token j: the state after sample j * 25 at 500 Hz
    torch.testing.assert_close(wrist(**ForceTorqueEncoder.example(1, 0.2)).times[0], torch.arange(4) * 25 / 500.0)
    audio = AudioEncoder(dim=16).eval()  # token j: frames 4j .. 4j + 3, one per 160 samples at 16 kHz
    times = audio(**AudioEncoder.example(1, 0.2)).times[0]
    torch.testing.assert_close(times[1:] - times[:-1], torch.full((times.numel() - 1,), 4 * 160 / 16000.0))
    torch.testing.assert_close(times[0], torch.tensor(1.5 * 160 / 16000.0))
    touch = TactileEncoder(dim=16, depth=1).eval()  # every token summarises the whole stream: its middle
    torch.testing.assert_close(touch(**TactileEncoder.example(1, 0.2)).times[0], torch.full((4,), 5.5 / 60.0))


def test_a_camera_with_irregular_frames_gives_their_own_times():
    torch.manual_seed(0)
    vision = VisionEncoder(dim=16, depth=1).eval()
    x = VisionEncoder.example(2, 0.1)
    own = torch.tensor([[0.0, 0.05, 0.2], [0.01, 0.02, 0.09]])
    out = vision(**x, times=own)
    torch.testing.assert_close(out.times, own.repeat_interleave(16, dim=1))
    torch.testing.assert_close(out.tokens, vision(**x).tokens)  # times change positions only
    for bad in (own[:, :2], own.masked_fill(own > 0.1, float("nan")), -own, own.long()):
        with pytest.raises(ValueError, match="times"):
            vision(**x, times=bad)


@pytest.mark.parametrize("cls, given", [(ForceTorqueEncoder, 1000), (AudioEncoder, 44100), (TactileEncoder, 30),
                                        (VisionEncoder, 60)])
def test_a_stream_declared_at_another_rate_is_refused_naming_both(cls, given):
    encoder = cls(dim=16).eval()
    x = cls.example(1, 0.2)
    declared = f"{cls.sample_rate:g} Hz"
    with pytest.raises(ValueError, match=rf"sample_rate: a {given} Hz stream, but the {cls.name} encoder takes "
                                         rf"{declared}"):
        encoder(**x, sample_rate=given)
    torch.testing.assert_close(encoder(**x, sample_rate=cls.sample_rate).tokens, encoder(**x).tokens)
    with pytest.raises(ValueError, match="sample_rate: expected the stream's rate in Hz"):
        encoder(**x, sample_rate="fast")
