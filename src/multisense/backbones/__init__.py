"""The embedded backbones: a tiny GPT-2, a tiny CLIP vision tower and a tiny in-context Llama,
pretrained by the library itself on its own procedural data (`multisense.backbones.build`) and
shipped with the package as Hugging Face folders (safetensors), so that nothing is downloaded and
nothing is pretrained unless asked. They load through `from_pretrained` like any checkpoint.

    name         folder   what
    lm=default   lm       GPT-2, 4 layers x 128, the procedural language's word tokenizer
    vision=default vision CLIP vision tower, 4 layers x 128, 32-pixel images, 4-pixel patches
    lm=icl       icl      Llama, 2 layers x 64, with the induction heads in-context learning needs

`multisense backbones build --out DIR` rebuilds the set (DIR/lm, DIR/vision, DIR/icl and
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

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Backbones":
        """The set in `root` (default: the shipped one), checked to be complete."""
        root = Path(WEIGHTS if root is None else root)
        found = cls(lm=root / "lm", vision=root / "vision", icl=root / "icl")
        missing = [str(p) for p in (found.lm, found.vision, found.icl)
                   for name in NEEDED if not (p / name).is_file()]
        missing += [str(p / "tokenizer.json") for p in (found.lm, found.icl) if not (p / "tokenizer.json").is_file()]
        if missing:
            raise FileNotFoundError(f"embedded backbones: {root} is missing {missing[:3]}; rebuild them with "
                                    f"`multisense backbones build --out {root}`")
        return found


def resolve(lm: str, vision: str | None = None) -> tuple[str, str | None]:
    """Local directories for `model.lm` and `model.vision`: "default" names the embedded GPT-2
    and CLIP tower, "icl" (LM only) the embedded in-context Llama, anything else must be a local
    directory already (vision None: the LM alone)."""
    if vision == "icl":
        raise ValueError('model.vision: "icl" names a language model; expected "default" or a directory')
    # Checked here: transformers would take a missing path for a Hub repo id and fail with
    # "Repo id must be in the form ...".
    if lm not in ("default", "icl") and not os.path.isdir(lm):
        raise FileNotFoundError(f"model.lm: expected a local directory, 'default' or 'icl', got {lm!r} "
                                "(no such directory)")
    if vision not in (None, "default") and not os.path.isdir(vision):
        raise FileNotFoundError(f"model.vision: expected a local directory or 'default', got {vision!r} "
                                "(no such directory)")
    if "default" in (lm, vision) or lm == "icl":
        shipped = Backbones.at()
        lm = str(shipped.icl if lm == "icl" else shipped.lm if lm == "default" else lm)
        vision = str(shipped.vision) if vision == "default" else vision
    return lm, vision
