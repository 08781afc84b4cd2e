"""Plots and a markdown report of a training run (matplotlib, written as PNG files).

Plots: the loss curve, each gated layer's |tanh(alpha)| over training (attention and FF
gates), and where the resampler's latents look in an image.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_loss(history: list[dict], path: Path) -> Path:
    steps = [r["step"] for r in history]
    loss = np.array([r["loss"] for r in history])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps[window - 1:], smooth, lw=1.8, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gates(history: list[dict], path: Path) -> Path:
    """history records carry 'gates_attn' and 'gates_ff': lists of |tanh(alpha)| per gated layer."""
    rows = [r for r in history if "gates_attn" in r]
    steps = [r["step"] for r in rows]
    attn = np.array([r["gates_attn"] for r in rows])
    ff = np.array([r["gates_ff"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i in range(attn.shape[1]):
        line, = ax.plot(steps, attn[:, i], lw=1.6, label=f"layer {i} attn")
        ax.plot(steps, ff[:, i], lw=1.0, ls="--", color=line.get_color(), label=f"layer {i} ff")
    ax.set(xlabel="step", ylabel="|tanh(alpha)|", title="gate openings per gated layer", ylim=(0, 1.02))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_attention(image: np.ndarray, maps: np.ndarray, path: Path, title: str = "") -> Path:
    """image [3, H, W] in [0, 1]; maps [K, h, w] attention of K latents (or heads) over the patch grid."""
    k = maps.shape[0]
    fig, axes = plt.subplots(1, k + 1, figsize=(1.8 * (k + 1), 2.1))
    axes[0].imshow(image.transpose(1, 2, 0))
    axes[0].set_title("image", fontsize=8)
    for ax, m, i in zip(axes[1:], maps, range(k)):
        ax.imshow(image.transpose(1, 2, 0))
        ax.imshow(m, cmap="magma", alpha=0.7, extent=(0, image.shape[2], image.shape[1], 0), interpolation="nearest")
        ax.set_title(f"latent {i}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_attention_shift(shift: dict, path: Path, title: str = "") -> Path:
    """Heat-map of the latents' attention share per sensor (rows) over an episode's time (columns),
    averaged over episodes, with the mean first contact marked; beside it each sensor's share
    before and after contact (eval.touch.attention_shift)."""
    names, shares, centres = shift["names"], shift["shares"].mean(0).T, shift["bin_centres"]  # [M, bins]
    width = centres[1] - centres[0] if len(centres) > 1 else 1.0
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [3, 1.3]})
    im = ax.imshow(shares, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(shares.max()), 1e-6),
                   extent=(centres[0] - width / 2, centres[-1] + width / 2, len(names) - 0.5, -0.5))
    ax.axvline(float(np.mean(shift["contact"])), color="w", ls="--", lw=1.2, label="first contact (mean)")
    ax.set(yticks=range(len(names)), yticklabels=names, xlabel="time in the episode (s)", title=title)
    ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=ax, label="share of attention")
    x = np.arange(len(names))
    bar.bar(x - 0.2, [shift["before"][n] for n in names], 0.4, label="before contact")
    bar.bar(x + 0.2, [shift["after"][n] for n in names], 0.4, label="after contact")
    bar.set(xticks=x, ylabel="share", title="before / after")
    bar.set_xticklabels(names, rotation=30, fontsize=7)
    bar.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
