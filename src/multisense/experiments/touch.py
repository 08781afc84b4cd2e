"""Experiments on the touch world, each one `multisense experiment` command:

    touch_occlusion   material accuracy of camera-only, touch-only, late-fusion (concatenation
                      + MLP) and Perceiver-fusion models as the probability that the camera is
                      blocked after contact goes from 0 to 1
    touch_attention   the share of the latents' attention on each sensor over an episode's time,
                      before and after first contact (arrays, heat-map), also per token
    touch_subsets     every subset of sensors present at inference (trained with modality dropout)
    perceiver_cost    the Perceiver against full self-attention over the same tokens as the
                      input grows to 115,200 tokens: time, FLOPs and peak memory

The models are trained by `multisense train` from the `touch` preset (one run per variant and
training seed, shared by the three touch experiments) and evaluated by `eval.touch` on held-out
episodes (world seed 1; `--samples` of them). Claims: Perceiver (Jaegle et al. 2021), a latent
bottleneck whose cost is linear in the input; the lecture's design question 4, that attention
moves from the camera to touch and force when the camera is blocked.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from ..data.world.tasks import world_dataset
from ..eval.touch import accuracy, attention_shift, evaluate, with_occlusion

# variant -> (the preset's sensors it keeps, fusion); single-sensor models are Perceivers over one sensor
VARIANTS = {"camera only": (("camera",), "perceiver"), "touch only": (("touch",), "perceiver"),
            "late fusion": (None, "late"), "Perceiver fusion": (None, "perceiver")}
OCCLUSIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def touch_config(r, variant: str, seed: int):
    """(training config, run name) of one variant at one training seed."""
    keep, fuse = VARIANTS[variant]
    sensors = r.config("touch", "probe").model.fusion.sensors
    sensors = {n: s for n, s in sensors.items() if keep is None or n in keep}
    extra = (f"model.fusion.sensors={json.dumps(sensors)}", f"model.fusion.fuse={fuse}", f"train.seed={seed}",
             f"data.seed={seed}")
    name = f"touch/{_slug(variant)}-seed{seed}"
    got = sorted(r.config("touch", name, *extra).model.fusion.sensors)
    if got != sorted(sensors):  # the user's overrides come last: one under model.fusion.sensors.<name> adds it back
        raise ValueError(f"overrides: the {variant} model would get the sensors {got}, not {sorted(sensors)}; the "
                         "experiment chooses each model's sensors, so leave model.fusion.sensors.* out of them")
    return extra, name


def touch_model(r, variant: str, seed: int):
    from ..models.fusion import FusionModel

    extra, name = touch_config(r, variant, seed)
    return FusionModel.from_pretrained(r.trained("touch", name, *extra)).eval()


def held_out(r):
    """The held-out episodes: world seed 1, `r.samples` of them, as long as the training ones."""
    world = r.config("touch", "probe").data.world
    world = dataclasses.replace(world, episodes=r.samples, seed=1, occlusion=0.0)
    return world_dataset(world, task="material", sensors=("camera", "touch", "wrist", "microphone"), log=print)


def _spread(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "per_seed": a.tolist()}


# ------------------------------------------------------------------------------ touch_occlusion


def touch_occlusion(r) -> dict:
    data = held_out(r)
    out = {"occlusions": list(OCCLUSIONS), "episodes": len(data), "seeds": list(r.seeds), "chance": 0.25,
           "variants": {}}
    for variant in VARIANTS:
        rows = []
        for seed in r.seeds:
            model = touch_model(r, variant, seed)
            drop = tuple(s for s in data.sensors if s not in model.config.sensors)
            rows.append([accuracy(model, with_occlusion(data, p), drop=drop) for p in OCCLUSIONS])
        out["variants"][variant] = _spread(rows)
    return out


def touch_occlusion_report(res: dict):
    ps = res["occlusions"]
    lines = ["| model | " + " | ".join(f"p = {p:g}" for p in ps) + " |", "|---|" + "---:|" * len(ps)]
    for name, v in res["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(v["mean"], v["std"])) + " |")
    table = "\n".join(lines) + (f"\n\np: the probability that an episode's camera is blocked from the first contact "
                                f"on. Material accuracy on {res['episodes']} held-out episodes, mean ± std over "
                                f"training seeds {res['seeds']}; chance {res['chance']:.2f}.")

    def plot(ax):
        for name, v in res["variants"].items():
            ax.errorbar(ps, v["mean"], yerr=v["std"], marker="o", capsize=3, label=name)
        ax.axhline(res["chance"], color="k", ls="--", lw=1, label="chance")
        ax.set(xlabel="probability the camera is blocked after contact", ylabel="material accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=7)

    return table, plot


# ------------------------------------------------------------------------------ touch_attention


def touch_attention(r, *, bins: int = 15) -> dict:
    """The Perceiver-fusion models' attention over time on held-out episodes with the camera
    blocked after contact; the arrays of each seed in RUN/touch_attention/seed<s>.npz."""
    blocked = with_occlusion(held_out(r), 1.0)
    folder = r.out_dir / "touch_attention"
    folder.mkdir(parents=True, exist_ok=True)
    before, after, mean_shares, tokens = [], [], [], None
    for seed in r.seeds:
        model = touch_model(r, "Perceiver fusion", seed)
        shift = attention_shift(model, blocked, bins=bins)
        names = shift["names"]
        np.savez(folder / f"seed{seed}.npz", shares=shift["shares"], bin_centres=shift["bin_centres"],
                 contact=shift["contact"], names=np.array(names))
        before.append([shift["before"][n] for n in names])
        after.append([shift["after"][n] for n in names])
        mean_shares.append(shift["shares"].mean(0))  # [bins, M]
        if tokens is None:
            _, masks, _ = model.encode(_one_batch(blocked))
            tokens = [int(masks[n][0].sum()) for n in names]
    fraction = np.array(tokens) / sum(tokens)
    return {"names": names, "tokens": tokens, "bins": bins, "bin_centres": shift["bin_centres"].tolist(),
            "contact_mean": float(np.mean(shift["contact"])), "seeds": list(r.seeds), "episodes": len(blocked),
            "before": _spread(before), "after": _spread(after),
            "before_per_token": _spread(np.array(before) / fraction),
            "after_per_token": _spread(np.array(after) / fraction),
            "shares_mean": np.mean(mean_shares, 0).tolist(), "arrays": str(folder)}


def _one_batch(dataset):
    from ..eval.touch import batches

    return next(batches(dataset, 1))["sensors"]


def touch_attention_report(res: dict):
    lines = ["| sensor | tokens | share before contact | after | per token, before | after |",
             "|---|---:|---:|---:|---:|---:|"]
    for j, n in enumerate(res["names"]):
        cell = lambda k: f"{res[k]['mean'][j]:.3f} ± {res[k]['std'][j]:.3f}"  # noqa: E731
        lines.append(f"| {n} | {res['tokens'][j]} | {cell('before')} | {cell('after')} | {cell('before_per_token')} | "
                     f"{cell('after_per_token')} |")
    table = "\n".join(lines) + (
        f"\n\nShare of the first cross-attention's mass on each sensor's tokens, camera blocked from the first "
        f"contact on, in the {res['bins']} time slices wholly before or after each episode's first contact; "
        f"{res['episodes']} held-out episodes, mean ± std over training seeds {res['seeds']}. Per token: the share "
        "divided by the sensor's share of the tokens (1 = attention in proportion to its token count). "
        f"Arrays per seed: `{res['arrays']}/seed<s>.npz` (shares [episodes, slices, sensors]).")

    def plot(ax):
        shares = np.array(res["shares_mean"]).T  # [M, bins]
        c = res["bin_centres"]
        w = c[1] - c[0] if len(c) > 1 else 1.0
        im = ax.imshow(shares, aspect="auto", cmap="viridis", vmin=0,
                       extent=(c[0] - w / 2, c[-1] + w / 2, len(res["names"]) - 0.5, -0.5))
        ax.axvline(res["contact_mean"], color="w", ls="--", lw=1.2, label="first contact (mean)")
        ax.set(yticks=range(len(res["names"])), yticklabels=res["names"], xlabel="time in the episode (s)")
        ax.figure.colorbar(im, ax=ax, label="share of attention")
        ax.legend(fontsize=7, loc="upper right")

    return table, plot


# ------------------------------------------------------------------------------ touch_subsets


def touch_subsets(r) -> dict:
    data = held_out(r)
    out = {"seeds": list(r.seeds), "episodes": len(data), "chance": 0.25, "models": {}}
    for variant in ("Perceiver fusion", "late fusion"):
        per_seed = []
        for seed in r.seeds:
            result = evaluate(touch_model(r, variant, seed), data, occlusions=(1.0,), drop_subsets=True)
            per_seed.append({row["sensors"]: row["accuracy"] for row in result["rows"]})
        names = list(per_seed[0])
        spread = _spread([[s[n] for n in names] for s in per_seed])
        out["models"][variant] = {n: {"mean": spread["mean"][i], "std": spread["std"][i]} for i, n in enumerate(names)}
    return out


def touch_subsets_report(res: dict):
    models = list(res["models"])
    subsets = list(res["models"][models[0]])
    lines = ["| sensors present | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for s in subsets:
        lines.append(f"| {s.replace('+', ' + ')} | " + " | ".join(
            f"{res['models'][m][s]['mean']:.3f} ± {res['models'][m][s]['std']:.3f}" for m in models) + " |")
    table = "\n".join(lines) + (f"\n\nCamera (where present) blocked from the first contact on; material accuracy "
                                f"on {res['episodes']} held-out episodes, mean ± std over training seeds "
                                f"{res['seeds']}; chance {res['chance']:.2f}. Each model was trained once with "
                                "modality dropout and is given only the sensors in the row.")

    def plot(ax):
        y = np.arange(len(subsets))
        for k, m in enumerate(models):
            ax.barh(y + (k - 0.5) * 0.4, [res["models"][m][s]["mean"] for s in subsets], 0.4,
                    xerr=[res["models"][m][s]["std"] for s in subsets], label=m)
        ax.set_yticks(y, [s.replace("+", " + ") for s in subsets], fontsize=6)
        ax.axvline(res["chance"], color="k", ls="--", lw=1, label="chance")
        ax.set(xlabel="material accuracy", xlim=(0, 1))
        ax.invert_yaxis()
        ax.legend(fontsize=7)

    return table, plot


# ------------------------------------------------------------------------------ perceiver_cost


def perceiver_cost(r, *, lengths=(1_800, 7_200, 28_800, 115_200), dim: int = 1024, latents: int = 64,
                   chunk: int = 8192, max_full: int = 14_400, threads: int | None = None) -> dict:
    """Each length in a fresh process: the Perceiver (bench.perceiver's model) and, up to
    `max_full` tokens, one full self-attention layer; beyond, its FLOPs by formula and its time
    extrapolated at the FLOP rate of the longest length that ran."""
    import torch

    from ..bench.perceiver import in_fresh_process, self_attention_flops

    threads = threads or torch.get_num_threads()
    full_lengths = sorted({n for n in lengths if n <= max_full} | {max_full})
    full = {n: in_fresh_process("self_attention", tokens=n, dim=dim, threads=threads) for n in full_lengths}
    rate = full[max_full]["flops"] / full[max_full]["seconds"]  # FLOP/s of the longest run
    rows = []
    for n in lengths:
        p = in_fresh_process("perceiver", tokens=n, dim=dim, latents=latents, chunk=chunk, threads=threads)
        f = full.get(n)
        flops = self_attention_flops(n, dim)
        rows.append({"tokens": n, "perceiver": p, "full_flops": flops, "full_measured": f is not None,
                     "full_seconds": f["seconds"] if f else flops / rate,
                     "full_peak_mib": f["peak_rss_mib"] if f else None})
    return {"dim": dim, "latents": latents, "chunk": chunk, "threads": threads, "max_full": max_full, "rows": rows,
            "full_only": {n: full[n] for n in full_lengths if n not in lengths}}


def perceiver_cost_report(res: dict):
    lines = ["| tokens | Perceiver time | full self-attention time | ratio | Perceiver GFLOP | full GFLOP | ratio | "
             "Perceiver peak | full peak |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["rows"]:
        p = row["perceiver"]
        t = f"{row['full_seconds']:.2f} s" + ("" if row["full_measured"] else " (extrapolated)")
        peak = f"{row['full_peak_mib']:,.0f} MiB" if row["full_peak_mib"] is not None else "not run"
        lines.append(f"| {row['tokens']:,} | {p['seconds']:.2f} s | {t} | {row['full_seconds'] / p['seconds']:,.1f}x "
                     f"| {p['flops'] / 1e9:,.1f} | {row['full_flops'] / 1e9:,.1f} "
                     f"| {row['full_flops'] / p['flops']:,.1f}x | {p['peak_rss_mib']:,.0f} MiB | {peak} |")
    table = "\n".join(lines) + (
        f"\n\nOne forward, batch 1, fp32, width {res['dim']}, {res['threads']} threads, each case in a fresh process "
        f"(peak: the process's peak resident set, the input included). Perceiver: {res['latents']} latents, one "
        f"cross-attention reading the keys {res['chunk']:,} at a time, two latent self-attention layers; FLOPs counted "
        f"by FlopCounterMode. Full self-attention: one layer (SDPA), FLOPs 4N²D + 8ND², run up to "
        f"{res['max_full']:,} tokens and beyond that its time extrapolated at the FLOP rate measured there.")

    def plot(ax):
        n = [row["tokens"] for row in res["rows"]]
        ax.loglog(n, [row["perceiver"]["seconds"] for row in res["rows"]], marker="o", label="Perceiver")
        ran = [row for row in res["rows"] if row["full_measured"]]
        ax.loglog([row["tokens"] for row in res["rows"]], [row["full_seconds"] for row in res["rows"]], ls=":",
                  color="tab:orange")
        ax.loglog([row["tokens"] for row in ran], [row["full_seconds"] for row in ran], marker="o", ls="",
                  color="tab:orange", label="full self-attention (dotted: extrapolated)")
        ax.set(xlabel="input tokens", ylabel="forward time (s)")
        ax.legend(fontsize=7)

    return table, plot


EXPERIMENTS = {
    "touch_occlusion": (touch_occlusion, touch_occlusion_report),
    "touch_attention": (touch_attention, touch_attention_report),
    "touch_subsets": (touch_subsets, touch_subsets_report),
    "perceiver_cost": (perceiver_cost, perceiver_cost_report),
}
