"""Building a set of embedded backbones: `multisense backbones build|probe`.

    multisense backbones build --out DIR            # all three: 19 minutes on one thread (manifest)
    multisense backbones build --out DIR --parts vision
    multisense backbones probe [DIR]                # the shipped set by default

Each part is built into a temporary folder and renamed into DIR/<part> once complete, so an
interrupted build leaves the previous part or none. DIR/manifest.json records the recipe version and, per part, its steps, seed, time and probes
(`probes`), the command, the machine and the library versions.
The shipped set (`multisense/backbones/weights`) was made by this command; a test rebuilds it and
checks that the rebuild reaches the shipped probes (tests/backbones, marked slow).

The in-context LM's lookup forms or not with the seed at the same recipe, so its build tries
ICL_SEEDS in turn and keeps the first whose 8-shot accuracy in words reaches ICL_MIN_ACCURACY
(formed: about 1.0; not formed: about 0.2); if none does, it fails loudly and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from ..files import atomic_directory, atomic_file
from ..machine import machine
from . import MANIFEST, WEIGHTS, Backbones, probes
from .language import ICL_STEPS, LM_STEPS, default_tokenizer, pretrain_icl_lm, pretrain_lm
from .pretraining import SUMMARY_FILE
from .seq2seq import T5_STEPS, pretrain_t5
from .vision import VISION_STEPS, pretrain_vision

# Bump on any change to what the backbones learn; the shipped manifest must carry it (tests).
VERSION = "backbones-v9"
PARTS = ("lm", "vision", "icl", "t5")
ICL_SEEDS = (1, 2, 3, 4)
ICL_MIN_ACCURACY = 0.6


def build_icl_lm(out: Path, *, steps: int = ICL_STEPS, seeds: tuple[int, ...] = ICL_SEEDS,
                 min_accuracy: float = ICL_MIN_ACCURACY, progress: bool = True) -> dict:
    """Train the in-context LM into `out`, seed after seed until its lookup forms; its summary."""
    tokenizer, tried = default_tokenizer(), {}
    for seed in seeds:
        pretrain_icl_lm(tokenizer, out, steps=steps, seed=seed, progress=progress)
        summary = json.loads((out / SUMMARY_FILE).read_text())
        tried[seed] = summary["in_words_accuracy"]
        if tried[seed] >= min_accuracy:
            return {**summary, "seeds_tried": tried}
        warnings.warn(f"in-context LM, seed {seed}: {probes.ICL_CHECK_SHOTS}-shot accuracy in words "
                      f"{tried[seed]:.2f} < {min_accuracy}: the lookup did not form; trying the next seed", stacklevel=2)
    raise RuntimeError(f"the in-context LM formed no lookup with any seed: {probes.ICL_CHECK_SHOTS}-shot accuracy in "
                       f"words per seed {tried}, expected >= {min_accuracy}; nothing was written")


def probe(part: str, folder: Path) -> dict[str, float]:
    """The probes of one built part (see `probes`)."""
    if part == "vision":
        return {"shape_probe": probes.shape_probe(transformers.CLIPVisionModel.from_pretrained(folder).eval())}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if part == "t5":
        model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
        return {"denoising_accuracy": probes.denoising_accuracy(model, tokenizer)}
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    if part == "lm":
        return {"heldout_loss": probes.heldout_loss(model, tokenizer)}
    return {"in_words_accuracy": probes.in_words_accuracy(model, tokenizer)}


def build(out: str | Path, *, parts: tuple[str, ...] = PARTS, progress: bool = True, lm_steps: int = LM_STEPS,
          vision_steps: int = VISION_STEPS, icl_steps: int = ICL_STEPS, t5_steps: int = T5_STEPS, icl_seeds: tuple[int, ...] = ICL_SEEDS,
          icl_min_accuracy: float = ICL_MIN_ACCURACY, measure: bool = True, command: str = "") -> Path:
    """Build `parts` into `out` (each replacing its folder whole) and update out/manifest.json,
    with every part's probes unless `measure` is false."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"parts: unknown {unknown}; expected some of {PARTS}")
    out = Path(out)
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("version") not in (None, VERSION):
        manifest = {}  # parts of an older recipe are not kept beside a new one
    records = manifest.get("parts", {})
    for part in parts:
        summary: dict = {}

        def make(folder: Path, part=part) -> None:
            if part == "lm":
                pretrain_lm(default_tokenizer(), folder, steps=lm_steps, seed=0, progress=progress)
            elif part == "vision":
                pretrain_vision(folder, steps=vision_steps, seed=0, progress=progress)
            elif part == "t5":
                pretrain_t5(folder, steps=t5_steps, seed=0, progress=progress)
            else:
                summary.update(build_icl_lm(folder, steps=icl_steps, seeds=icl_seeds, min_accuracy=icl_min_accuracy,
                                            progress=progress))
            summary.update(json.loads((folder / SUMMARY_FILE).read_text()))
            if measure:
                summary.update(probe(part, folder))

        atomic_directory(out / part, make)
        # each part says how it was made: parts of one set may come from different builds
        records[part] = {**summary, "command": command,
                         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                         "machine": machine("cpu"), "torch": torch.__version__, "transformers": transformers.__version__}
    manifest = {"version": VERSION, "parts": records}
    atomic_file(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return out


def main(argv: list[str] | None = None, prog: str = "multisense backbones") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=prog, description="build or probe the embedded backbones")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="pretrain a set of embedded backbones")
    b.add_argument("--out", required=True, help="folder for lm/, vision/, icl/, t5/ and manifest.json "
                                                f"(the shipped set is {WEIGHTS})")
    b.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which parts to (re)build")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p = sub.add_parser("probe", help="measure a set (default: the shipped one)")
    p.add_argument("folder", nargs="?", default=str(WEIGHTS), help="a folder written by `build`")
    args = parser.parse_args(argv)
    if args.action == "build":
        if not args.progress:  # transformers' own bars too (loading and writing shards)
            transformers.utils.logging.disable_progress_bar()
        start = time.perf_counter()
        # the command as a user would retype it: the output folder is theirs, not part of the recipe
        command = " ".join([prog, "build", "--out", "DIR", "--parts", *args.parts]
                           + ([] if args.progress else ["--no-progress"]))
        build(args.out, parts=tuple(args.parts), progress=args.progress, command=command)
        print(f"built {', '.join(args.parts)} into {args.out} in {time.perf_counter() - start:.0f} s")
        print((Path(args.out) / MANIFEST).read_text())
        return 0
    found = Backbones.at(args.folder)
    print(json.dumps({part: probe(part, getattr(found, part)) for part in PARTS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m multisense.backbones.build"))
