"""Model families, one file each, sharing the blocks in multisense.nn and one save/load (io.py)."""

from .flamingo import FlamingoCache, FlamingoConfig, FlamingoModel

__all__ = ["FlamingoCache", "FlamingoConfig", "FlamingoModel"]
