"""Audio encoder: a log-mel spectrogram computed in torch (differentiable, batched; `torch.stft`
with librosa's own mel filterbank, `librosa.filters.mel`, so it equals
`librosa.feature.melspectrogram`), then a strided convolution over time to audio tokens.

Input layout: waveform [N, T] (mono, in [-1, 1]) at `sample_rate` (16 kHz), mask [N, T] (True =
a real sample). Spectrogram frame t is centred on sample t * hop_length; token j covers frames
j * patch .. (j + 1) * patch - 1, and is real if its first frame's centre is a real sample; its
time is the mean of its frames' centres, (j * patch + (patch - 1) / 2) * hop_length /
sample_rate. A stream declared at another rate (`sample_rate=`, e.g. 44.1 kHz) is refused (the
mel filterbank and hop are built for 16 kHz); a waveform without one is taken to be at 16 kHz.
Shape letters: N streams, T samples, K mel bands, Fr frames, D width.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.checks import check_shape
from ..nn.perceiver import TransformerLayer
from .base import EncoderOutput, check_rate, sample_times
from .registry import register_encoder


class LogMelSpectrogram(nn.Module):
    """[N, T] -> [N, K, Fr]: 10 log10(max(mel power, amin)): librosa's `power_to_db` with ref 1 and
    top_db=None (its default top_db=80 also clips every value to 80 dB below the peak).

    The defaults of librosa's melspectrogram where it has them (hann window, centred frames with
    zero padding, power 2, Slaney mel scale and norm); `log=False` returns the mel power itself."""

    def __init__(self, *, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 40,
                 fmin: float = 0.0, fmax: float | None = None, amin: float = 1e-10, log: bool = True):
        super().__init__()
        import librosa  # the filterbank only: the transform itself is torch

        self.n_fft, self.hop_length, self.amin, self.log = n_fft, hop_length, amin, log
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.register_buffer("filterbank", torch.from_numpy(fb).float(), persistent=False)  # [K, n_fft/2+1]
        self.register_buffer("window", torch.hann_window(n_fft, dtype=torch.float64), persistent=False)  # periodic, as scipy's

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform, self.n_fft, hop_length=self.hop_length, window=self.window.to(waveform.dtype),
                          center=True, pad_mode="constant", return_complex=True)  # [N, n_fft/2+1, Fr]
        mel = self.filterbank.to(waveform.dtype) @ spec.abs().pow(2)
        return 10.0 * torch.log10(mel.clamp(min=self.amin)) if self.log else mel


@register_encoder
class AudioEncoder(nn.Module):
    name = "audio"
    sample_rate = 16000.0
    layout = "waveform [N, T] mono in [-1, 1]; mask [N, T]"

    def __init__(self, *, dim: int = 64, n_fft: int = 400, hop_length: int = 160, n_mels: int = 40, patch: int = 4,
                 depth: int = 1, heads: int = 4, dim_head: int = 16, ff_mult: int = 2):
        super().__init__()
        self.dim, self.patch, self.hop_length = dim, patch, hop_length
        self.spectrogram = LogMelSpectrogram(sample_rate=int(self.sample_rate), n_fft=n_fft, hop_length=hop_length,
                                             n_mels=n_mels)
        self.norm_in = nn.LayerNorm(n_mels)  # dB values are large and offset: standardise each frame
        self.embed = nn.Conv1d(n_mels, dim, patch, stride=patch)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, waveform: torch.Tensor, mask: torch.Tensor | None = None,
                sample_rate: float | None = None) -> EncoderOutput:
        """-> tokens [N, S, D], mask and times [N, S], S = Fr // patch."""
        check_rate(self, sample_rate)
        check_shape("waveform", waveform, "N T")
        if not waveform.is_floating_point():
            raise ValueError(f"waveform: {waveform.dtype} samples; the encoder takes float samples in [-1, 1] "
                             "(int16 audio: x.float() / 32768)")
        if mask is not None:
            check_shape("mask", mask, "N T", N=waveform.shape[0], T=waveform.shape[1])
            mask = mask.bool()
            waveform = waveform.masked_fill(~mask, 0.0)
        if waveform.shape[1] < self.hop_length * self.patch:
            raise ValueError(f"waveform: {waveform.shape[1]} samples, fewer than one token's "
                             f"{self.hop_length * self.patch} (hop_length x patch)")
        peak = float(waveform.abs().amax()) if waveform.numel() else 0.0
        if peak > 1.0 + 1e-3:
            raise ValueError(f"waveform: samples up to {peak:g}; the encoder takes samples in [-1, 1] (int16-scaled "
                             "audio: divide by 32768)")
        spec = self.spectrogram(waveform)  # [N, K, Fr]
        x = self.norm_in(spec.transpose(1, 2)).transpose(1, 2)
        tokens = self.embed(x).transpose(1, 2)  # [N, Fr // patch, D]
        token_mask = None
        if mask is not None:
            first = torch.arange(tokens.shape[1], device=mask.device) * self.patch * self.hop_length
            token_mask = mask[:, first.clamp(max=mask.shape[1] - 1)]
        for layer in self.layers:
            tokens = layer(tokens, token_mask)
        N, S = tokens.shape[:2]
        times = sample_times(S, self.sample_rate / self.hop_length, step=self.patch, offset=(self.patch - 1) / 2,
                             device=tokens.device).expand(N, S)
        return EncoderOutput(self.norm(tokens), token_mask, times, waveform.shape[1] / self.sample_rate)

    @classmethod
    def example(cls, n: int = 2, seconds: float = 0.5, *, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T = max(1, round(seconds * cls.sample_rate))
        return {"waveform": torch.randn(n, T, generator=g).clamp(-1, 1) * 0.3,
                "mask": torch.ones(n, T, dtype=torch.bool)}
