"""`multisense cost`: the planning calculator. What a sensor input costs each architecture, from
its sizes alone (no model is built). The formulas (docs/compare.md, "Cost formulas"):

    N = cameras x fps x seconds x patches                       input tokens
    Perceiver cross-attention, R latents over N tokens, width D:
        scores and weighted sum    4 R N D        (Q K^T: 2 R N D, A V: 2 R N D)
        projections                4 N D^2 + 4 R D^2   (K, V of the inputs; Q, out of the latents)
        attention scores held      H R N
    full self-attention over the same N tokens:
        scores and weighted sum    4 N^2 D
        projections                8 N D^2        (Q, K, V, out)
        attention scores held      H N^2
    one FLOP counts a multiply or an add (a multiply-add is 2), as FlopCounterMode counts.

LM context each family gives the input (plus the prompt's own tokens):
    llava     every token is spliced into the sequence:   N
    pali      every token enters the encoder:              N
    flamingo  one marker per media item (a camera's clip): cameras; media reach the LM by cross-attention
    fusion    the Perceiver's latents as the LM's prefix:  R
"""

from __future__ import annotations

import argparse
import json
import math


def attention_cost(*, cameras: int, fps: float, seconds: float, patches: int, latents: int, dim: int,
                   heads: int = 8, bytes_per_score: int = 4, context: int = 2048) -> dict:
    """Every figure `multisense cost` prints, as a dict."""
    for name, value in (("cameras", cameras), ("fps", fps), ("seconds", seconds), ("patches", patches),
                        ("latents", latents), ("dim", dim), ("heads", heads), ("bytes", bytes_per_score),
                        ("context", context)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--{name}: expected a positive finite number, got {value}")
    # fps x seconds in floating point: 0.1 x 10 is 1.0000000000000002; a whole number within
    # rounding counts as whole
    n = cameras * fps * seconds * patches
    if abs(n - round(n)) > 1e-9 * max(1.0, n) or round(n) < 1:
        raise ValueError(f"cameras x fps x seconds x patches = {n:g}: expected a whole number of tokens")
    n, r, d = round(n), latents, dim
    cross = {"attention_flops": 4 * r * n * d, "projection_flops": 4 * n * d * d + 4 * r * d * d,
             "score_elements": heads * r * n}
    full = {"attention_flops": 4 * n * n * d, "projection_flops": 8 * n * d * d, "score_elements": heads * n * n}
    for part in (cross, full):
        part["total_flops"] = part["attention_flops"] + part["projection_flops"]
        part["score_bytes"] = part["score_elements"] * bytes_per_score
    families = {"llava": n, "pali": n, "flamingo": cameras, "fusion": r}
    return {
        "input_tokens": n, "latents": r, "dim": d, "heads": heads, "context": context,
        "perceiver_cross_attention": cross, "full_self_attention": full,
        "ratio": {"attention_flops": full["attention_flops"] / cross["attention_flops"],
                  "total_flops": full["total_flops"] / cross["total_flops"],
                  "score_memory": full["score_elements"] / cross["score_elements"]},
        "lm_context": {name: {"tokens": tokens, "fits": tokens <= context} for name, tokens in families.items()},
    }


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def render(cost: dict) -> str:
    cross, full, ratio = cost["perceiver_cross_attention"], cost["full_self_attention"], cost["ratio"]
    lines = [f"input: {cost['input_tokens']:,} tokens; {cost['latents']} latents, width {cost['dim']}, "
             f"{cost['heads']} heads",
             "",
             "| | Perceiver cross-attention | full self-attention | ratio |",
             "|---|---|---|---|",
             f"| attention FLOPs (scores + weighted sum) | {_si(cross['attention_flops'], 'FLOP')} | "
             f"{_si(full['attention_flops'], 'FLOP')} | {ratio['attention_flops']:,.0f}x |",
             f"| with the projections | {_si(cross['total_flops'], 'FLOP')} | {_si(full['total_flops'], 'FLOP')} | "
             f"{ratio['total_flops']:,.1f}x |",
             f"| attention scores held | {_si(cross['score_bytes'], 'B')} | {_si(full['score_bytes'], 'B')} | "
             f"{ratio['score_memory']:,.0f}x |",
             "",
             f"| family | LM context tokens | fits --context {cost['context']:,} |",
             "|---|---|---|"]
    for name, cell in cost["lm_context"].items():
        lines.append(f"| {name} | {cell['tokens']:,} | {'yes' if cell['fits'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "multisense cost") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="what a sensor input costs each architecture "
                                                            "(formulas: docs/compare.md)")
    parser.add_argument("--cameras", type=int, default=1, help="media streams (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=1, help="frames per second of each (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=1, help="length of the input (default: %(default)s)")
    parser.add_argument("--patches", type=int, default=256, help="tokens per frame (default: %(default)s)")
    parser.add_argument("--latents", type=int, default=64, help="Perceiver latents R (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=1024, help="attention width D (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (default: %(default)s)")
    parser.add_argument("--bytes", type=int, default=4, dest="bytes_per_score",
                        help="bytes per attention score: 4 fp32, 2 bf16 (default: %(default)s)")
    parser.add_argument("--context", type=int, default=2048, help="the LM's context length (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    cost = attention_cost(**args)
    print(json.dumps(cost, indent=2) if as_json else render(cost))
    return 0
