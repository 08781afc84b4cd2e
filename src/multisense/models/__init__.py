"""Model families, one file each, sharing the blocks in multisense.nn and one save/load (io.py)."""

from .flamingo import FlamingoCache, FlamingoConfig, FlamingoModel
from .fusion import FusionConfig, FusionModel
from .llava import LlavaCache, LlavaConfig, LlavaModel
from .pali import PaLIConfig, PaLIModel
from .registry import FAMILIES, AutoModel, get_family, register_family

__all__ = ["FAMILIES", "AutoModel", "get_family", "register_family", "FlamingoCache", "FlamingoConfig", "FlamingoModel", "LlavaCache", "LlavaConfig", "LlavaModel", "FusionConfig", "FusionModel",
           "PaLIConfig", "PaLIModel"]
