import json

import numpy as np
import pytest
import torch

from multisense.config import load_config
from multisense.data import scenes
from multisense.data.collate import collate
from multisense.data.tasks import get_task
from multisense.eval import fewshot
from multisense.train.trainer import TrainConfig, train
from tests.train.backbones import save_tiny_backbones
from tests.train.test_trainer import overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    backbones = save_tiny_backbones(root)
    train(load_config(TrainConfig, None, overrides(backbones, root / "run", **{"train.steps": 2})))
    return root / "run" / "model"


def test_cut_answer_stops_at_the_shot_separator():
    assert fewshot.cut_answer(" up left . <image> direction : down") == "up left"
    assert fewshot.cut_answer("dax") == "dax" and fewshot.cut_answer("") == ""


def test_reused_vision_features_score_like_pixels(trained):
    import transformers

    from multisense import FlamingoModel

    model = FlamingoModel.from_pretrained(trained).eval()
    tok = transformers.AutoTokenizer.from_pretrained(trained)
    for block in model.gated_layers:  # open the gates so that the media matter
        block.attn_gate.alpha.data.fill_(0.5)
    task = get_task("video", frames=4)
    episodes = [task.episode(np.random.default_rng(i), 1, "eval") for i in range(3)]
    targets = [e.target for e in episodes]
    direct = fewshot._target_scores(model, tok, episodes, targets)
    batch = collate(episodes, tok)
    feats = model.encode_frames(batch["pixel_values"], batch["frame_mask"])
    reused = fewshot._target_scores(model, tok, episodes, targets,
                                    {"media_features": feats, "frame_mask": batch["frame_mask"]})
    for a, b in zip(direct, reused):
        torch.testing.assert_close(a, b)


def test_eval_command_writes_json_and_markdown_with_every_cell(trained, tmp_path, capsys):
    out = tmp_path / "res"
    code = fewshot.main(["--model", str(trained), "--task", "video", "--task-arg", "frames=4", "--shots", "0", "2",
                         "--seeds", "0", "1", "--samples", "4", "--out", str(out)])
    assert code == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["shots"]) == {"0", "2"} and result["chance"] == 0.25
    for cell in result["shots"].values():
        assert set(cell) == {"exact_match", "accuracy", "token_accuracy", "nll", "overflow"}
        assert all(0 <= v <= 1 for m in ("exact_match", "accuracy", "token_accuracy") for v in cell[m]["seeds"])
        assert len(cell["nll"]["seeds"]) == 2
    assert "| 2 |" in out.with_suffix(".md").read_text()
    # the truncation baseline and runtime overrides run through the same command
    assert fewshot.main(["--model", str(trained), "--task", "video", "--task-arg", "frames=6", "--shots", "0",
                         "--seeds", "0", "--samples", "2", "--truncate-frames", "4", "--mode", "all_previous"]) == 0


def test_eval_command_names_a_missing_tokenizer_and_takes_one_given(trained, tmp_path):
    import shutil

    bare = tmp_path / "bare"  # a model saved without its tokenizer
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(trained / name, bare / name)
    with pytest.raises(FileNotFoundError, match=r"--model: .*bare holds no tokenizer.*--tokenizer DIR"):
        fewshot.main(["--model", str(bare), "--task", "video", "--task-arg", "frames=4", "--shots", "0"])
    assert fewshot.main(["--model", str(bare), "--tokenizer", str(trained), "--task", "video", "--task-arg",
                         "frames=4", "--shots", "0", "--seeds", "0", "--samples", "2"]) == 0


def test_from_pretrained_refuses_overrides_that_change_shapes(trained):
    from multisense import FlamingoModel

    with pytest.raises(ValueError, match="num_latents"):
        FlamingoModel.from_pretrained(trained, num_latents=3)


def test_in_words_episodes_describe_the_media_and_keep_the_labels_consistent():
    task = fewshot.InWords(get_task("fewshot_mapped"))
    for i in range(20):
        episode = task.episode(np.random.default_rng(i), 8, "eval")
        assert not episode.media and "<image>" not in episode.prompt
        *demos, query = episode.prompt.split(" . ")
        named = {}
        for demo in demos:  # "label : circle dax": one label per shape within an episode
            *words, label = demo.split()
            assert named.setdefault(" ".join(words), label) == label
        assert episode.target in task.answers
        if query in named:  # a demonstrated class: the answer is the label it was shown with
            assert episode.target == named[query]
        # The very episode the task draws with images from the same generator, in words.
        pictured = get_task("fewshot_mapped").episode(np.random.default_rng(i), 8, "eval")
        assert episode.target == pictured.target
        assert [d.split()[-1] for d in demos] == [d.split()[-1] for d in pictured.prompt.split(" . ")[:-1]]
        assert set(named) == {"label : " + s for s in scenes.SHAPES}  # 8 shots tile the 4 shapes twice


def test_eval_command_in_words_takes_a_flamingo_checkpoint_or_a_plain_lm(trained, tmp_path):
    import transformers

    lm = tmp_path / "lm"
    from multisense import FlamingoModel

    FlamingoModel.from_pretrained(trained).lm.save_pretrained(lm)
    transformers.AutoTokenizer.from_pretrained(trained).save_pretrained(lm)
    results = []
    for model_dir in (trained, lm):
        out = tmp_path / model_dir.name
        assert fewshot.main(["--model", str(model_dir), "--task", "fewshot_mapped", "--shots", "0", "2", "--seeds", "0",
                             "--samples", "4", "--in-words", "--out", str(out)]) == 0
        results.append(json.loads(out.with_suffix(".json").read_text()))
    assert results[0]["task"] == "fewshot_mapped (in words)"
    assert results[0]["shots"] == results[1]["shots"]  # the checkpoint's frozen LM is that LM


def test_episodes_over_the_context_are_marked_overflow_not_scored_as_wrong(tmp_path):
    """A LLaVA whose budget holds one 4-frame clip (64 tokens) but not two: 0-shot episodes are
    scored, 1-shot ones are overflow, and a set where none fits is refused."""
    import transformers

    from multisense import LlavaModel

    lm_dir, vision_dir = save_tiny_backbones(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(lm_dir)
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
    model = LlavaModel.from_lm(lm, transformers.CLIPVisionModel.from_pretrained(vision_dir), tokenizer=tok,
                               max_length=100).eval()
    task = get_task("video", frames=4)
    zero = [task.episode(np.random.default_rng(i), 0, "eval") for i in range(3)]
    one = [task.episode(np.random.default_rng(i), 1, "eval") for i in range(3)]
    assert fewshot.score_episodes(model, tok, zero, task.answers)["overflow"] == 0.0
    mixed = fewshot.score_episodes(model, tok, zero + one, task.answers)
    assert mixed["overflow"] == 0.5
    assert mixed["nll"] == pytest.approx(fewshot.score_episodes(model, tok, zero, task.answers)["nll"])
    with pytest.raises(ValueError, match="none of the 3 fits the LM's context of 100"):
        fewshot.score_episodes(model, tok, one, task.answers)
