"""`multisense generate`: a saved model of any family answers a prompt about images.

    multisense generate --model runs/x/model --image cat.png --prompt "<image> a photo of"
    multisense generate --model runs/x/model --image a.png --image b.png \\
        --prompt "<image> is left of <image> ? answer :" --max-new-tokens 8

The prompt holds one `<image>` marker per --image, in order (else the error names both counts).
Images are centre-cropped to the vision encoder's size and normalised with --mean/--std (default
0.5/0.5: the [-1, 1] the procedural tasks and shipped backbones use; give a pretrained encoder its
own, e.g. CLIP's). Greedy unless --do-sample; the usual transformers keywords otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data.collate import Sample, collate
from ..data.images import image_to_tensor
from ..tokens import MEDIA_MARKER


def main(argv: list[str] | None = None, prog: str = "multisense generate") -> int:
    from PIL import Image

    from ..models import AutoModel
    from ..models.registry import family_of

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained")
    parser.add_argument("--prompt", required=True, help=f"text with one {MEDIA_MARKER} per --image")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeatable, in marker order)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--mean", type=float, nargs="+", default=[0.5])
    parser.add_argument("--std", type=float, nargs="+", default=[0.5])
    args = parser.parse_args(argv)

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model: expected a directory written by save_pretrained, got {args.model!r}")
    family_of(args.model)
    markers = args.prompt.count(MEDIA_MARKER)
    if markers != len(args.image):
        raise ValueError(f"--prompt holds {markers} {MEDIA_MARKER} markers for {len(args.image)} --image files; "
                         "give one marker per image, in order")
    model = AutoModel.from_pretrained(args.model).eval()
    if model.tokenizer is None:
        raise FileNotFoundError(f"--model: {args.model} holds no tokenizer; save the model with one")
    size = getattr(getattr(getattr(model.vision_encoder, "model", None), "config", None), "image_size", None)
    if args.image and not isinstance(size, int):
        raise ValueError("--image: the model's vision encoder does not say its image size")
    media = []
    for path in args.image:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--image: no file {path!r}")
        with Image.open(path) as image:
            media.append(image_to_tensor(image, size, mean=_one(args.mean), std=_one(args.std))[None])  # [1, C, H, W]
    batch = collate([Sample(args.prompt, "", media)], model.tokenizer, for_generation=True)
    tok = model.tokenizer
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             temperature=args.temperature if args.do_sample else None, num_beams=args.num_beams,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    print(tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return 0


def _one(values: list[float]):
    return values[0] if len(values) == 1 else values
