import json

import pytest

from multisense.experiments import runner as experiments
from multisense.experiments import touch as touch_experiments
from tests.train.backbones import save_tiny_backbones

TINY = ["model.flamingo.num_latents=4", "model.flamingo.resampler_depth=1", "model.flamingo.resampler_heads=2",
        "model.flamingo.resampler_dim_head=8", "model.flamingo.xattn_heads=2", "model.flamingo.xattn_dim_head=8",
        "data.batch_size=2", "train.device=cpu", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    lm, vision = save_tiny_backbones(tmp_path_factory.mktemp("bb"))
    return [f"model.lm={lm}", f"model.vision={vision}", *TINY]


@pytest.mark.parametrize("name", [n for n in experiments.EXPERIMENTS if n not in touch_experiments.EXPERIMENTS])
def test_every_experiment_runs_end_to_end_and_writes_its_report(tiny, tmp_path, name):
    docs, images = tmp_path / "experiments.md", tmp_path / "img"
    argv = [name, *tiny, "--out-dir", str(tmp_path / "runs"), "--steps", "2", "--samples", "2", "--seeds", "0",
            "--docs", str(docs), "--images", str(images), "--no-progress", "--probes"]
    assert experiments.main(argv) == 0
    result = json.loads((tmp_path / "runs" / name / "result.json").read_text())
    text = docs.read_text()
    assert f"<!-- bench:experiment:{name}:start -->" in text and f"exp_{name}.png" in text
    assert (images / f"exp_{name}.png").stat().st_size > 0
    if name == "gate_init":
        zero = result["curves"]["alpha = 0"]
        # at step 0, closed gates give exactly the frozen LM's loss; N(0, 1) gates do not
        assert zero["text_loss"][0] == pytest.approx(result["frozen_lm_text_loss"], abs=1e-6)
        assert result["curves"]["alpha ~ N(0, 1)"]["text_loss"][0] != pytest.approx(result["frozen_lm_text_loss"])
    if name == "frame_embeddings":
        assert "max_frames" in result["without_interpolation"] or "interpolat" in result["without_interpolation"]
    if name == "crosslingual":
        from multisense.experiments import crosslingual

        assert set(result["summary"]) == {*crosslingual.CONDITIONS, *crosslingual.PROBES, *crosslingual.FAMILIES,
                                          *crosslingual.PROBE_FAMILIES}
        run = result["runs"]["transfer"]["0"]
        assert len(run["accuracy"]) == len(run["any_language"]) == 12  # 3 languages x 4 question kinds
        for cell in ("aa/colour", "aa/count"):  # in the pivot both scorings are the same choice
            assert run["accuracy"][cell] == run["any_language"][cell]
        from multisense.data import languages as ml

        kinds = ml.QUESTION_KINDS
        assert result["chance"]["bb"] == pytest.approx(sum(1 / len(ml.ANSWER_SETS["bb"][k]) for k in kinds) / 4)


def test_crosslingual_runs_its_probes_only_when_asked(tiny, tmp_path):
    from multisense.experiments import crosslingual

    argv = ["crosslingual", *tiny, "--out-dir", str(tmp_path / "runs"), "--steps", "2", "--samples", "2", "--seeds",
            "0", "--docs", "", "--no-progress"]
    assert experiments.main(argv) == 0
    result = json.loads((tmp_path / "runs" / "crosslingual" / "result.json").read_text())
    assert set(result["summary"]) == {*crosslingual.CONDITIONS, *crosslingual.FAMILIES}
    assert result["steps"] == 2
