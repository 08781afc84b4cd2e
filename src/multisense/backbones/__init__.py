"""The embedded backbones: a tiny GPT-2, a tiny CLIP vision tower, a tiny in-context Llama and a
tiny T5, pretrained by the library itself on its own procedural data (`multisense.backbones.build`) and
shipped with the package as Hugging Face folders (safetensors), so that nothing is downloaded and
nothing is pretrained unless asked. They load through `from_pretrained` like any checkpoint.

    name         folder   what
    lm=default   lm       GPT-2, 4 layers x 128, the procedural language's word tokenizer
    vision=default vision CLIP vision tower, 4 layers x 128, 32-pixel images, 4-pixel patches
    lm=icl       icl      Llama, 2 layers x 64, with the induction heads in-context learning needs
    lm=t5        t5       T5 (mT5 layout), 2+2 layers x 128, on text in data.languages's three languages

`multisense backbones build --out DIR` rebuilds the set (DIR/lm, DIR/vision, DIR/icl, DIR/t5 and
DIR/manifest.json, which records the recipe, the seeds, the time and the probes);
`multisense backbones probe DIR` measures a set. Point `model.lm` / `model.vision` at a rebuilt
folder to use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"  # the shipped set
MANIFEST = "manifest.json"
NEEDED = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class Backbones:
    """The folders of one set of embedded backbones."""

    lm: Path
    vision: Path
    icl: Path
    t5: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Backbones":
        """The set in `root` (default: the shipped one), checked to be complete."""
        root = Path(WEIGHTS if root is None else root)
        found = cls(lm=root / "lm", vision=root / "vision", icl=root / "icl", t5=root / "t5")
        missing = [str(p) for p in (found.lm, found.vision, found.icl, found.t5)
                   for name in NEEDED if not (p / name).is_file()]
        missing += [str(p / "tokenizer.json") for p in (found.lm, found.icl, found.t5)
                    if not (p / "tokenizer.json").is_file()]
        if missing:
            raise FileNotFoundError(f"embedded backbones: {root} is missing {missing[:3]}; rebuild them with "
                                    f"`multisense backbones build --out {root}`")
        return found


LM_NAMES = ("default", "icl", "t5")  # model.lm's names of the embedded LMs: their folders lm, icl, t5


def resolve(lm: str, vision: str | None = None) -> tuple[str, str | None]:
    """Local directories for `model.lm` and `model.vision`: "default" names the embedded GPT-2
    and CLIP tower, "icl" and "t5" (LM only) the embedded in-context Llama and T5, anything else
    must be a local directory already (vision None: the LM alone)."""
    if vision in LM_NAMES[1:]:
        raise ValueError(f'model.vision: "{vision}" names a language model; expected "default" or a directory')
    # Checked here: transformers would take a missing path for a Hub repo id and fail with
    # "Repo id must be in the form ...".
    if lm not in LM_NAMES and not os.path.isdir(lm):
        raise FileNotFoundError(f"model.lm: expected a local directory or one of {', '.join(map(repr, LM_NAMES))}, "
                                f"got {lm!r} (no such directory)")
    if vision not in (None, "default") and not os.path.isdir(vision):
        raise FileNotFoundError(f"model.vision: expected a local directory or 'default', got {vision!r} "
                                "(no such directory)")
    if lm in LM_NAMES or vision == "default":
        shipped = Backbones.at()
        lm = str({"default": shipped.lm, "icl": shipped.icl, "t5": shipped.t5}.get(lm, lm))
        vision = str(shipped.vision) if vision == "default" else vision
    return lm, vision
