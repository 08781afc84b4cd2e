"""The `multisense` command: a thin layer over the library.

    multisense demo [--steps N] [--out DIR]     the main job on the embedded default
    multisense demo touch [...]                 the second: which material is touched, camera blocked or not
    multisense train --config FILE [a.b=v ...]  train from a YAML preset (also under torchrun)
    multisense eval --model DIR --task NAME     few-shot evaluation at 0/2/4/8 shots, several seeds
                                                (a fusion model: held-out touch episodes, camera visible/blocked)
    multisense generate --model DIR --image F --prompt "<image> ..."   any saved family answers
    multisense experiment NAME|all              the claims checked: gate_init, frame_embeddings, masking,
                                                touch_occlusion, touch_attention, touch_subsets, perceiver_cost
    multisense bench [...]                      block throughput and memory benchmarks
    multisense bench training [...]             training throughput, memory, DDP scaling
    multisense bench perceiver [...]            Perceiver fusion over 115,200 tokens against full self-attention
    multisense backbones build|probe [...]      rebuild or measure the embedded backbones
    multisense compare [--quick] [--docs F]     every family measured: cost per image count, accuracy
    multisense cost --cameras 5 --fps 30 ...    what an input costs each architecture (no model)

An error in what was given (a config value, a path, a run already there) is one line,
`multisense <command>: error: ...`, and exit code 2; `multisense --debug <command> ...` (or
MULTISENSE_DEBUG=1) shows its traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

# The library's errors about what a user gave: a config value or argument (ValueError, which
# also covers the config's unknown keys and wrong types), a missing file or directory, an
# out_dir that holds a run, a loss gone non-finite (it names the step). Their message is the
# whole story. Anything else (TypeError, KeyError, RuntimeError, ...) is a bug or an
# environment failure and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


def _demo(argv: list[str]) -> int:
    if argv[:1] == ["touch"]:
        from .demo_touch import TouchDemoConfig
        from .demo_touch import run as touch

        return touch(_options(TouchDemoConfig, argv[1:], "multisense demo touch",
                              "Perceiver fusion of camera, touch, force-torque and audio in a MuJoCo world"))
    from .demo import DemoConfig, run

    run(_options(DemoConfig, argv, "multisense demo", "Flamingo on procedural scenes, on CPU"))
    return 0


def _options(config_class, argv: list[str], prog: str, description: str):
    """A demo's config from its flags: one per field, its help from the field's metadata."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_class):  # one flag per field, its help from the field's metadata
        flag, text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=text)
    return config_class(**vars(parser.parse_args(argv)))


def _bench(argv: list[str]) -> int:
    if argv[:1] == ["training"]:
        from .bench.throughput import main as training

        return training(argv[1:], prog="multisense bench training") or 0
    if argv[:1] == ["perceiver"]:
        from .bench.perceiver import main as perceiver

        return perceiver(argv[1:], prog="multisense bench perceiver") or 0
    from .bench.blocks import main

    return main(argv) or 0


def _train(argv: list[str]) -> int:
    """`multisense train`: the settings from a preset and dotted overrides, then the run; the
    held-out check the settings ask for is `eval.checks.held_out_check`."""
    import json

    import yaml

    from .config import load_config
    from .eval.checks import held_out_check
    from .train.trainer import CheckFailed, TrainConfig, resolve_preset, train

    parser = argparse.ArgumentParser(prog="multisense train", description="train a model of any registered family "
                                     "from a YAML preset and dotted overrides (also under torchrun)")
    parser.add_argument("--config", help="a YAML file or the name of a shipped preset")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, resolve_preset(args.config) if args.config else None, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False))
        return 0
    try:
        summary = train(cfg, check=held_out_check)
    except CheckFailed as err:  # the run worked and said what it found: no traceback, exit code 1
        print(f"multisense train: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


def _eval(argv: list[str]) -> int:
    """Few-shot evaluation of a language-model family; a fusion model's held-out touch episodes."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--model")
    model = probe.parse_known_args(argv)[0].model
    if model and os.path.isfile(os.path.join(model, "config.json")):
        from .models.registry import family_of

        if family_of(model) == "fusion":
            from .eval.touch import main as touch

            return touch(argv)
    from .eval.fewshot import main

    return main(argv)


def _generate(argv: list[str]) -> int:
    from .eval.generate import main

    return main(argv)


def _experiment(argv: list[str]) -> int:
    from .experiments.runner import main

    return main(argv)


def _backbones(argv: list[str]) -> int:
    from .backbones.build import main

    return main(argv)


def _cost(argv: list[str]) -> int:
    from .bench.cost import main

    return main(argv)


def _compare(argv: list[str]) -> int:
    from .experiments.compare import main

    return main(argv)


COMMANDS = {"compare": _compare, "cost": _cost, "demo": _demo, "train": _train, "eval": _eval, "generate": _generate,
            "experiment": _experiment, "bench": _bench,
            "backbones": _backbones}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("MULTISENSE_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        return COMMANDS[command](rest)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"multisense {command}: error: {err}", file=sys.stderr)  # argparse's form, and its exit code
        return 2


if __name__ == "__main__":
    sys.exit(main())
