"""Model families, one file each, sharing the blocks in multisense.nn and one save/load (io.py)."""

from .flamingo import FlamingoCache, FlamingoConfig, FlamingoModel
from .llava import LlavaCache, LlavaConfig, LlavaModel

__all__ = ["FlamingoCache", "FlamingoConfig", "FlamingoModel", "LlavaCache", "LlavaConfig", "LlavaModel"]
