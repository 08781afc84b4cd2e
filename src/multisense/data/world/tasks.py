"""Tasks over touch-world episodes, as batches a FusionModel reads: each sensor's inputs in its
encoder's layout, by name.

    camera      -> vision encoder:       frames [T, 3, 32, 32] in [0, 1], mask [T]
    touch       -> tactile encoder:      frames [T, 3, 32, 32], mask [T], reference [3, 32, 32]
    wrist       -> force_torque encoder: wrench [T, 6], mask [T]
    microphone  -> audio encoder:        waveform [T], mask [T]

`occlusion` is the probability that an episode's camera is the occluded one (blocked by the
gripper from the first contact on), drawn per episode from the seed. Tasks: "material" (4
classes: which surface, the question "does this feel like silk or burlap?"), "slipping" (did the
finger slip?), and "contact" (a language model only: the question names the event).

What decides "slipping": once pressed, the hand pulls along the surface with a force capped at
the episode's pull (sim.PULL). Where the pull exceeds what friction holds, the surface's mu
times the pads' load (the hand's weight and the press), the finger slides, else it holds; the
answer is "slips" when the pads slid at least SLIP_DISTANCE over the surface while touching it.
So it follows the material's friction, the press depth and the pull, none given to the model,
and the sensors show it: a sliding pad's tactile frames move across the texture and the
microphone hears the texture (on the smooth surface both faintly), the wrist feels the pull and
the load (sideways force at mu times the load while sliding), and an open camera sees the hand
move.

Every task is also a question in words, for a fusion model with a language model: a prompt
with one media marker (the fused sensors), "<image> question : did the finger slip ? answer :",
and a one-word answer, " yes". A contact question asks about one event (touching, slipping,
lifted off) *now*: the sample is the episode up to a cut, the streams masked after it, and the
answer is the event's value at the cut. The event and the cut are drawn per (episode, draw) from
the seed, the answer yes or no with equal odds (at a cut among the steps that have it), so the
answers are balanced whatever the events' share of an episode. `touch_batches` draws anew on
every pass over the episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...tokens import MEDIA_MARKER
from ..collate import Sample, collate
from .episodes import generate, load_episode
from .materials import NAMES
from .sim import AUDIO_RATE, CAMERA_RATE, PHYSICS_RATE, TACTILE_RATE

SENSORS = {"camera": "vision", "touch": "tactile", "wrist": "force_torque", "microphone": "audio"}
TASKS = ("material", "slipping", "contact")
# A finger slips when its pads slide this far (m) over the surface. Held by friction they give by a
# fraction of a millimetre as the pull builds (at most 1.6 mm in episodes 0-99 of seed 0); dragged,
# they slide 3-25 mm in a 3 s episode, from 2 mm in a 1 s one, whose pull lasts 0.27 s.
SLIP_DISTANCE = 0.002
LM_TASKS = ("contact",)  # the question names the event: a classification head cannot read it
QUESTIONS = {"material": "what does this feel like ?", "slipping": "did the finger slip ?"}
EVENTS = {"touching": "is the finger touching now ?", "slipping": "is the finger slipping now ?",
          "lifted": "is the finger lifted off now ?"}


def prompt(question: str) -> str:
    """The prompt of a question about the fused sensors (the marker), in the embedded LMs' form."""
    return f"{MEDIA_MARKER} question : {question} answer :"


def question_words() -> list[str]:
    """Every word of the touch world's prompts (for `data.tokenizer.add_missing_words`)."""
    texts = [prompt(q) for q in (*QUESTIONS.values(), *EVENTS.values())]
    return sorted({w for t in texts for w in t.split() if w != MEDIA_MARKER})


def _until(count: int, rate: float, step: int) -> torch.Tensor:
    """[count] bool: frame k of a stream at `rate` (taken at the physics step nearest k / rate
    seconds, as the simulator does) is taken at or before physics step `step`."""
    return torch.from_numpy(np.round(np.arange(count) * PHYSICS_RATE / rate) <= step)


def sensor_inputs(arrays: dict[str, np.ndarray], *, occluded: bool, sensors=tuple(SENSORS),
                  until: int | None = None) -> dict[str, dict]:
    """One episode's streams as each sensor encoder's keyword inputs (no batch dimension);
    `until`: a physics step, after which every stream is masked (the episode so far)."""
    out = {}
    frames = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731  [T, H, W, C] -> [T, C, H, W]
    mask = lambda n, rate: torch.ones(n, dtype=torch.bool) if until is None else _until(n, rate, until)  # noqa: E731
    if "camera" in sensors:
        cam = frames(arrays["camera_occluded" if occluded else "camera"])
        out["camera"] = {"frames": cam, "mask": mask(cam.shape[0], CAMERA_RATE)}
    if "touch" in sensors:
        tac = frames(arrays["tactile"])
        out["touch"] = {"frames": tac, "mask": mask(tac.shape[0], TACTILE_RATE),
                        "reference": frames(arrays["tactile_reference"][None])[0]}
    if "wrist" in sensors:
        w = torch.from_numpy(arrays["wrench"]).float()
        out["wrist"] = {"wrench": w, "mask": mask(w.shape[0], PHYSICS_RATE)}
    if "microphone" in sensors:
        a = torch.from_numpy(arrays["audio"]).float()
        out["microphone"] = {"waveform": a, "mask": mask(a.shape[0], AUDIO_RATE)}
    return out


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")


def class_names(task: str) -> list[str]:
    """The answers of `task`, in label order."""
    _check_task(task)
    return list(NAMES) if task == "material" else ["holds", "slips"] if task == "slipping" else ["no", "yes"]


def answer_words(task: str) -> list[str]:
    """The answers of `task` in words, in label order (what a fusion model's LM says)."""
    _check_task(task)
    return list(NAMES) if task == "material" else ["no", "yes"]


def slid(arrays: dict[str, np.ndarray]) -> float:
    """How far (m) the pads slid over the surface while touching it, in one episode."""
    return float((arrays["pad_speed"] * arrays["touching"]).sum() / PHYSICS_RATE)


def label(arrays: dict[str, np.ndarray], spec: dict, task: str) -> int:
    if task == "material":
        return NAMES.index(spec["material"])
    if task == "slipping":
        return int(slid(arrays) >= SLIP_DISTANCE)
    raise ValueError(f"task: expected one of {list(TASKS)} (contact: `contact_question`), got {task!r}")


def contact_question(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[str, int, int]:
    """(event, cut step, answer 0/1): an event, then yes or no with equal odds where the episode
    has both, then a cut among the steps with that answer."""
    event = list(EVENTS)[int(rng.integers(len(EVENTS)))]
    values = arrays[event]
    answer = int(rng.random() < 0.5) if values.any() and not values.all() else int(values[0])
    return event, int(rng.choice(np.flatnonzero(values == bool(answer)))), answer


class TouchEpisodes(torch.utils.data.Dataset):
    """Cached episodes (paths from `generate`), held in memory as the simulator wrote them."""

    def __init__(self, paths, *, task: str = "material", sensors=tuple(SENSORS), occlusion: float = 0.0,
                 seed: int = 0):
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        unknown = [s for s in sensors if s not in SENSORS]
        if unknown:
            raise ValueError(f"sensors: no sensor named {unknown[0]!r} in the touch world (it has {list(SENSORS)})")
        if not 0.0 <= occlusion <= 1.0:
            raise ValueError(f"occlusion: expected a probability in [0, 1], got {occlusion}")
        self.episodes = [load_episode(p) for p in paths]
        self.task, self.sensors, self.occlusion, self.seed = task, tuple(sensors), occlusion, seed

    def __len__(self) -> int:
        return len(self.episodes)

    def occluded(self, i: int) -> bool:
        return bool(np.random.default_rng([self.seed, i, 7]).random() < self.occlusion)

    def __getitem__(self, i: int) -> dict:
        return self.get(i)

    def question(self, i: int, draw: int = 0) -> tuple[str, int, int | None]:
        """Episode i's (question, answer in answer_words order, cut step or None); `draw` chooses
        another contact question (the same for the other tasks)."""
        arrays, spec = self.episodes[i]
        if self.task != "contact":
            return QUESTIONS[self.task], label(arrays, spec, self.task), None
        event, until, answer = contact_question(arrays, np.random.default_rng([self.seed, i, draw, 13]))
        return EVENTS[event], answer, until

    def get(self, i: int, draw: int = 0) -> dict:
        """Episode i's sensors (up to the cut, for a contact question), label, question and answer."""
        question, answer, until = self.question(i, draw)
        arrays = self.episodes[i][0]
        return {"sensors": sensor_inputs(arrays, occluded=self.occluded(i), sensors=self.sensors, until=until),
                "labels": answer, "question": question, "answer": answer_words(self.task)[answer]}


def collate_touch(samples: list[dict], tokenizer=None, answers: dict[str, str] | None = None) -> dict:
    """Stack episodes (equal lengths: episodes of one generator run share `seconds`); labels [B]
    class ids. With a `tokenizer` (a fusion model's LM), the questions as prompts instead:
    input_ids / attention_mask / labels [B, L], loss on the answer (+ eos) only; `answers` maps
    an answer word to the LM's word for it (FusionConfig.answers)."""
    names = samples[0]["sensors"].keys()
    sensors = {n: {k: torch.stack([s["sensors"][n][k] for s in samples]) for k in samples[0]["sensors"][n]}
               for n in names}
    if tokenizer is None:
        return {"sensors": sensors, "labels": torch.tensor([s["labels"] for s in samples])}
    return {"sensors": sensors, **question_tokens([s["question"] for s in samples], [s["answer"] for s in samples],
                                                  tokenizer, answers)}


def question_tokens(questions: list[str], answers: list[str], tokenizer, words: dict[str, str] | None = None) -> dict:
    """input_ids / attention_mask / labels [B, L] of each question's prompt and its answer (loss
    on the answer and eos only); `words`: an answer word -> the LM's word for it."""
    words = words or {}
    return collate([Sample(prompt(q), " " + words.get(a, a)) for q, a in zip(questions, answers)], tokenizer)


@dataclass
class WorldData:
    """Which touch-world episodes a run trains on (`data.world` of `multisense train`): episodes
    0 .. episodes-1 of world seed `seed`. Held-out evaluation uses another world seed."""

    episodes: int = 240
    seed: int = 0
    seconds: float = 3.0
    occlusion: float = 0.5  # probability that an episode's camera is blocked from the first contact on
    workers: int = 2  # processes that simulate the episodes not cached yet
    cache_dir: str | None = None  # default: $MULTISENSE_CACHE or ~/.cache/multisense


def world_dataset(world: WorldData, *, task: str, sensors, log=None) -> TouchEpisodes:
    """The episodes `world` names (simulated now where not cached), as a TouchEpisodes."""
    paths = generate(world.episodes, world.seed, seconds=world.seconds, cache_dir=world.cache_dir,
                     workers=world.workers, log=log)
    return TouchEpisodes(paths, task=task, sensors=sensors, occlusion=world.occlusion, seed=world.seed)


def touch_batches(dataset: TouchEpisodes, batch_size: int, seed: int = 0, *, start_step: int = 0,
                  rank: int = 0, world_size: int = 1, grad_accum: int = 1, tokenizer=None,
                  answers: dict[str, str] | None = None):
    """Endless shuffled micro-batches for train.loop.fit, grad_accum per optimiser step. Global
    sample j is dataset.get(permutation_e[j mod n], draw=e), pass e = j // n drawn from (seed, e):
    so the data position is the step (an exact resume), and process r of N takes samples r, r+N,
    ... of each global batch, as the procedural tasks do. `tokenizer`, `answers`: collate_touch's."""
    n, per_step = len(dataset), batch_size * world_size * grad_accum
    orders: dict[int, np.ndarray] = {}

    def sample(j: int) -> dict:
        e = j // n
        if e not in orders:
            orders.clear()
            orders[e] = np.random.default_rng([seed, e]).permutation(n)
        return dataset.get(int(orders[e][j % n]), draw=e)

    step = start_step
    while True:
        mine = range(step * per_step + rank, (step + 1) * per_step, world_size)
        for a in range(grad_accum):
            yield collate_touch([sample(j) for j in mine[a * batch_size:(a + 1) * batch_size]], tokenizer, answers)
        step += 1
