import json

import numpy as np
import pytest

from multisense.experiments import runner as experiments
from multisense.experiments import touch as touch_experiments
from multisense.experiments.runner import Runner

TINY = ["data.world.episodes=4", "data.world.seconds=1.0", "data.world.workers=1", "data.batch_size=2",
        "optim.warmup_steps=1"]
TOUCH = ["touch_occlusion", "touch_attention", "touch_subsets"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The three touch experiments, tiny, in one run folder: the later ones reuse the first's models."""
    root = tmp_path_factory.mktemp("touch-exp")
    docs, images = root / "experiments.md", root / "img"
    results = {}
    for name in TOUCH:
        argv = [name, *TINY, f"data.world.cache_dir={root / 'cache'}", "--out-dir", str(root / "runs"),
                "--steps", "2", "--samples", "4", "--seeds", "0", "1", "--docs", str(docs), "--images", str(images),
                "--no-progress"]
        assert experiments.main(argv) == 0
        results[name] = json.loads((root / "runs" / name / "result.json").read_text())
    return root, results


@pytest.mark.parametrize("name", TOUCH)
def test_each_touch_experiment_writes_its_section_and_plot(ran, name):
    root, _ = ran
    text = (root / "experiments.md").read_text()
    assert f"<!-- bench:experiment:{name}:start -->" in text and (root / "img" / f"exp_{name}.png").stat().st_size > 0


def test_occlusion_sweep_measures_every_model_and_touch_only_ignores_the_camera(ran):
    _, res = ran
    occ = res["touch_occlusion"]
    assert list(occ["variants"]) == list(touch_experiments.VARIANTS)
    for v in occ["variants"].values():
        assert np.array(v["per_seed"]).shape == (2, len(touch_experiments.OCCLUSIONS))
    for row in occ["variants"]["touch only"]["per_seed"]:  # it has no camera: blocking it changes nothing
        assert len(set(row)) == 1


def test_subsets_cover_every_subset_and_agree_with_the_occlusion_sweep(ran):
    _, res = ran
    sub = res["touch_subsets"]["models"]["Perceiver fusion"]
    assert len(sub) == 15  # every non-empty subset of 4 sensors
    full_blocked = res["touch_occlusion"]["variants"]["Perceiver fusion"]["mean"][-1]  # the same models and episodes
    assert sub["camera+microphone+touch+wrist"]["mean"] == pytest.approx(full_blocked)


def test_attention_shares_sum_to_one_and_per_token_is_share_over_token_fraction(ran):
    root, res = ran
    att = res["touch_attention"]
    arrays = np.load(root / "runs" / "touch_attention" / "seed0.npz")
    assert arrays["shares"].shape == (4, att["bins"], 4) and list(arrays["names"]) == att["names"]
    np.testing.assert_allclose(arrays["shares"].sum(-1), 1.0, atol=1e-5)  # every slice holds tokens of some sensor
    fraction = np.array(att["tokens"]) / sum(att["tokens"])
    np.testing.assert_allclose(np.array(att["before_per_token"]["per_seed"]),
                               np.array(att["before"]["per_seed"]) / fraction, rtol=1e-6)


def test_a_sensor_override_that_would_change_a_variants_sensors_is_refused(tmp_path):
    r = Runner(str(tmp_path), ["model.fusion.sensors.camera.dim=32"], 4, (0,), 2, False)
    with pytest.raises(ValueError, match="touch only model would get the sensors"):
        touch_experiments.touch_config(r, "touch only", 0)


def test_perceiver_cost_measures_small_lengths_and_extrapolates_the_rest(tmp_path):
    r = Runner(str(tmp_path), [], 4, (0,), None, False)
    res = touch_experiments.perceiver_cost(r, lengths=(64, 512), dim=32, latents=4, chunk=64, max_full=128, threads=1)
    short, long = res["rows"]
    assert short["full_measured"] and not long["full_measured"] and long["full_peak_mib"] is None
    assert long["full_flops"] == 4 * 512 ** 2 * 32 + 8 * 512 * 32 ** 2
    # linear against quadratic: the FLOP ratio grows with the input
    assert long["full_flops"] / long["perceiver"]["flops"] > short["full_flops"] / short["perceiver"]["flops"]
    table, _ = touch_experiments.perceiver_cost_report(res)
    assert "(extrapolated)" in table and "not run" in table
