"""Sensor encoders, all following one protocol: forward(x) -> EncoderOutput(tokens [N, S, D], mask)."""

from .base import EncoderOutput, HFEncoder, ModuleEncoder, as_encoder, load_vision_encoder

__all__ = ["EncoderOutput", "HFEncoder", "ModuleEncoder", "as_encoder", "load_vision_encoder"]
