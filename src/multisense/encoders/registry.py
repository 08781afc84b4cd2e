"""The sensor-encoder registry: each encoder class has a registry name, a declared sample rate
and a documented input layout, and builds from keyword arguments alone.

    ENCODERS["tactile"](dim=64)            # or build_encoder("tactile", dim=64)
    encoder(x, mask=None) -> EncoderOutput(tokens [N, S, D], mask [N, S] or None)

Every registered class also offers `example(n, seconds)`: an input of the documented layout
(used by the tests, parametrised over the registry, and by the benchmarks).
"""

from __future__ import annotations

import difflib

ENCODERS: dict[str, type] = {}


def register_encoder(cls: type) -> type:
    """Class decorator: the class needs `name`, `sample_rate` (Hz; None for single images), `layout`."""
    for attr in ("name", "sample_rate", "layout"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__}: an encoder needs a class attribute {attr!r} to be registered")
    if cls.name in ENCODERS and ENCODERS[cls.name] is not cls:
        raise ValueError(f"encoder name {cls.name!r} is taken by {ENCODERS[cls.name].__name__}")
    ENCODERS[cls.name] = cls
    return cls


def get_encoder(name: str) -> type:
    if name not in ENCODERS:
        near = difflib.get_close_matches(str(name), ENCODERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"encoder: no sensor encoder named {name!r} (registered: {sorted(ENCODERS)}){hint}")
    return ENCODERS[name]


def build_encoder(name: str, **kwargs):
    return get_encoder(name)(**kwargs)
