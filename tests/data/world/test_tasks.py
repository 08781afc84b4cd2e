import numpy as np
import pytest
import torch

from multisense import FusionConfig, FusionModel
from multisense.data.world import generate
from multisense.data.world.sim import AUDIO_RATE, PHASES, PHYSICS_RATE, TACTILE_RATE
from multisense.data.world.tasks import EVENTS, SENSORS, TouchEpisodes, collate_touch, touch_batches
from multisense.train.loop import fit


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return generate(4, seed=11, seconds=1.0, cache_dir=tmp_path_factory.mktemp("cache"), workers=1)


def test_batches_hold_each_sensor_in_its_encoders_layout(paths):
    data = TouchEpisodes(paths, occlusion=0.5, seed=1)
    batch = collate_touch([data[0], data[1]])
    assert batch["labels"].tolist() == [0, 1]  # materials cycle through the episodes
    assert batch["sensors"]["camera"]["frames"].shape == (2, 30, 3, 32, 32)
    assert batch["sensors"]["touch"]["frames"].shape == (2, 60, 3, 32, 32)
    assert batch["sensors"]["touch"]["reference"].shape == (2, 3, 32, 32)
    assert batch["sensors"]["wrist"]["wrench"].shape == (2, 500, 6)
    assert batch["sensors"]["microphone"]["waveform"].shape == (2, 16000)
    assert [data.occluded(i) for i in range(4)] == [TouchEpisodes(paths, occlusion=0.5, seed=1).occluded(i)
                                                    for i in range(4)]
    with pytest.raises(ValueError, match="'sonar'"):
        TouchEpisodes(paths, sensors=("camera", "sonar"))


def test_a_fusion_model_trains_on_the_world_through_the_loop(paths):
    torch.manual_seed(0)
    sensors = {name: {"encoder": enc, "dim": 16} for name, enc in SENSORS.items()}
    sensors["touch"]["depth"] = sensors["camera"]["depth"] = 1
    model = FusionModel(FusionConfig(sensors=sensors, dim=32, num_latents=4, depth=1, heads=2, dim_head=8,
                                     cross_dim_head=8, class_names=["smooth", "brick", "grass", "gravel"],
                                     modality_dropout=0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = fit(model, touch_batches(TouchEpisodes(paths), batch_size=2), steps=2, optimizer=optimizer,
                  progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert all(p.grad is not None for p in model.head.parameters())


def test_batches_resume_at_their_step_and_two_processes_share_one_batch(paths):
    data = TouchEpisodes(paths)
    ids = lambda batch: batch["labels"].tolist()  # noqa: E731  (episode i has label i % 4: its identity here)
    one = touch_batches(data, batch_size=2, seed=3)
    steps = [ids(next(one)) for _ in range(5)]  # 10 samples: passes 0, 1 and half of 2
    assert sorted(steps[0] + steps[1]) == [0, 1, 2, 3]  # a pass is a permutation
    later = touch_batches(data, batch_size=2, seed=3, start_step=3)
    assert [ids(next(later)) for _ in range(2)] == steps[3:]
    ranks = [touch_batches(data, batch_size=1, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in steps[:3]:
        a, b = (ids(next(r))[0] for r in ranks)
        assert [a, b] == step  # process r takes samples r, r + 2, ... of each global batch


def test_contact_questions_see_the_episode_up_to_a_cut_and_answer_the_event_there(paths):
    data = TouchEpisodes(paths, task="contact")
    asked = []
    for i in range(4):
        arrays = data.episodes[i][0]
        for draw in range(12):
            sample = data.get(i, draw)
            question, answer, cut = data.question(i, draw)
            event = next(e for e, text in EVENTS.items() if text == question)
            assert sample["question"] == question and sample["labels"] == answer == int(arrays[event][cut])
            assert sample["answer"] == ["no", "yes"][answer]
            masks = {n: s["mask"] for n, s in sample["sensors"].items()}
            assert masks["wrist"].sum() == cut + 1 and masks["wrist"][:cut + 1].all()  # 500 Hz: the physics steps
            shown = int(masks["camera"].sum())  # 30 Hz: every frame taken at or before the cut, no later one
            assert masks["camera"][:shown].all() and round((shown - 1) * 500 / 30) <= cut
            assert shown == 30 or round(shown * 500 / 30) > cut
            asked.append((event, answer))
    assert data.get(0, 0)["question"] == TouchEpisodes(paths, task="contact").get(0, 0)["question"]  # seeded
    assert set(asked) == {(e, a) for e in EVENTS for a in (0, 1)}
    assert 0.3 < sum(a for _, a in asked) / len(asked) < 0.7  # yes and no with equal odds


def test_batches_with_a_tokenizer_carry_the_questions_and_resume_at_their_step(paths):
    from transformers import AutoTokenizer

    from multisense.backbones import resolve
    from multisense.data.tokenizer import add_missing_words
    from multisense.data.world.tasks import question_words
    from multisense.tokens import IGNORE_INDEX, MEDIA_MARKER

    tokenizer = AutoTokenizer.from_pretrained(resolve("default")[0])
    tokenizer.add_special_tokens({"additional_special_tokens": [MEDIA_MARKER]})
    add_missing_words(tokenizer, question_words())
    data = TouchEpisodes(paths, task="contact")
    one = touch_batches(data, batch_size=2, seed=3, tokenizer=tokenizer)
    steps = [next(one) for _ in range(4)]
    batch = steps[0]
    assert set(batch) == {"sensors", "input_ids", "attention_mask", "labels"}
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        text = tokenizer.convert_ids_to_tokens(row[labels != IGNORE_INDEX].tolist())
        assert text[0] in ("yes", "no") and text[1:] == [tokenizer.eos_token]  # loss on the answer and eos only
        assert tokenizer.convert_ids_to_tokens(row[:3].tolist()) == [MEDIA_MARKER, "question", ":"]
    later = touch_batches(data, batch_size=2, seed=3, start_step=2, tokenizer=tokenizer)
    for expected in steps[2:]:
        got = next(later)
        assert torch.equal(got["input_ids"], expected["input_ids"])
        assert torch.equal(got["sensors"]["wrist"]["mask"], expected["sensors"]["wrist"]["mask"])


@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    """Eight short episodes on each surface, each pulled as its seed draws."""
    return TouchEpisodes(generate(32, seed=1, seconds=1.0, cache_dir=tmp_path_factory.mktemp("pulled"), workers=1),
                         task="slipping")


def test_the_finger_slips_in_some_episodes_and_not_others_more_often_on_low_friction(pulled):
    answers = np.array([pulled.question(i)[1] for i in range(len(pulled))])
    materials = np.array([spec["material"] for _, spec in pulled.episodes])
    assert 0.3 <= answers.mean() <= 0.7, answers
    share = {name: answers[materials == name].mean() for name in ("smooth", "grass", "brick", "gravel")}
    # the presses are drawn alike for every surface: the lower mu, the more slips
    assert share["smooth"] > share["gravel"], share
    assert share["smooth"] + share["grass"] > share["brick"] + share["gravel"], share


def test_a_slip_shows_in_the_touch_sensor_and_the_microphone(pulled):
    """On the textured surfaces: while pulled, a slipping pad's tactile frames change from frame to
    frame (a held pad's only by their noise) and the texture sounds, louder than the hiss before
    contact (the smooth surface's relief is too gentle for either)."""
    change, loudness, answers = [], [], []
    for i, (arrays, spec) in enumerate(pulled.episodes):
        if spec["material"] == "smooth":
            continue
        sensors = pulled[i]["sensors"]
        pull = np.flatnonzero(arrays["phase"] == PHASES.index("slide"))
        frames = sensors["touch"]["frames"][int(np.ceil(pull[0] * TACTILE_RATE / PHYSICS_RATE)):
                                            int(pull[-1] * TACTILE_RATE / PHYSICS_RATE) + 1]
        change.append(float((frames[1:] - frames[:-1]).abs().mean()))
        audio = sensors["microphone"]["waveform"].numpy()
        sound = audio[int(pull[0] * AUDIO_RATE / PHYSICS_RATE): int(pull[-1] * AUDIO_RATE / PHYSICS_RATE)]
        before = audio[: int(np.argmax(arrays["touching"]) * AUDIO_RATE / PHYSICS_RATE)]
        loudness.append(float(sound.std() / before.std()))
        answers.append(pulled.question(i)[1])
    change, loudness, answers = np.array(change), np.array(loudness), np.array(answers, bool)
    assert answers.any() and not answers.all()
    assert change[answers].min() > change[~answers].max(), (change, answers)
    assert loudness[answers].min() > loudness[~answers].max(), (loudness, answers)
