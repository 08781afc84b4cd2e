"""The held-out check a training run passes before it writes `model/` (`TrainConfig.check`).

An in-context run can end at chance with an unchanged recipe: the `fewshot` preset's images may
come to read like their words on one machine or seed and never on another (measured:
docs/history.md). A run that is checked measures closed-set accuracy on its
task's evaluation episodes (as `multisense eval` does, episode seed 0) at each of `check.shots`
and passes if accuracy at the last shot count is at least `check.min_accuracy` and exceeds the
first by at least `check.min_gain`. `check.task_args` override `data.task_args` for the check's
episodes (the video preset trains with a `lead` and is checked at lead 0). `multisense train` runs it; from Python:

    from multisense.eval.checks import held_out_check
    train(cfg, check=held_out_check)

A fusion model (`model.family: fusion`) is checked on held-out touch-world episodes instead,
when `check.min_accuracy` is set (`touch_check`). It lives here, not in train/, because it is an
evaluation: train/ takes it as a function.
"""

from __future__ import annotations

from ..data.tasks import get_task
from .fewshot import evaluate


def held_out_check(model, tokenizer, cfg) -> dict:
    """{"passed", "accuracy" per shot count, "chance", "reasons"} of a trained model against
    cfg.check (a TrainConfig). A fusion model is checked on held-out touch-world episodes
    (`touch_check`)."""
    if getattr(model, "trains_on_world", False):
        return touch_check(model, cfg)
    check, data = cfg.check, cfg.data
    task = get_task(data.task, image_size=data.image_size, **{**data.task_args, **check.task_args})
    if not task.answers:
        raise ValueError(f"check.shots: data.task {data.task!r} has no closed answer set to score accuracy on; "
                         "set check.shots=[]")
    result = evaluate(model, tokenizer, task, shots=tuple(check.shots), seeds=(0,), samples=check.samples)
    accuracy = {k: cell["accuracy"]["mean"] for k, cell in result["shots"].items()}
    first, last = check.shots[0], check.shots[-1]
    reasons = []
    if check.min_accuracy is not None and accuracy[last] < check.min_accuracy:
        reasons.append(f"accuracy at {last} shots {accuracy[last]:.3f} < check.min_accuracy {check.min_accuracy}")
    if check.min_gain is not None and accuracy[last] - accuracy[first] < check.min_gain:
        reasons.append(f"accuracy at {last} shots minus at {first} shots, {accuracy[last]:.3f} - "
                       f"{accuracy[first]:.3f} = {accuracy[last] - accuracy[first]:.3f}, < check.min_gain "
                       f"{check.min_gain}")
    return {"passed": not reasons, "task": data.task, "task_args": {**data.task_args, **check.task_args},
            "samples": check.samples,
            "accuracy": {str(k): v for k, v in accuracy.items()}, "chance": result["chance"], "reasons": reasons}


def touch_check(model, cfg) -> dict:
    """A fusion model's accuracy on `check.samples` held-out episodes (world seed 1) of data.task,
    with the camera, if it has one, blocked from the first contact on (the case the touch presets
    are about): passed if at least `check.min_accuracy`."""
    import dataclasses

    from ..data.world.tasks import world_dataset
    from .touch import accuracy, with_occlusion

    world = dataclasses.replace(cfg.data.world, episodes=cfg.check.samples, seed=1, occlusion=1.0)
    dataset = world_dataset(world, task=cfg.data.task, sensors=tuple(model.config.sensors), log=print)
    value = accuracy(model, with_occlusion(dataset, 1.0))
    reasons = [] if value >= cfg.check.min_accuracy else [
        f"accuracy on {cfg.check.samples} held-out episodes with the camera blocked {value:.3f} < check.min_accuracy "
        f"{cfg.check.min_accuracy}"]
    return {"passed": not reasons, "task": cfg.data.task, "samples": cfg.check.samples, "world_seed": 1,
            "occlusion": 1.0, "accuracy": value, "reasons": reasons}
