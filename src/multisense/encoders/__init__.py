"""Sensor encoders, all following one protocol: forward(x) -> EncoderOutput(tokens [N, S, D], mask)."""

from .base import (
                   EncoderOutput,
                   HFEncoder,
                   ModuleEncoder,
                   as_encoder,
                   check_frame_mask,
                   encode_frames,
                   load_vision_encoder,
                   media_tokens,
)

__all__ = ["EncoderOutput", "HFEncoder", "ModuleEncoder", "as_encoder", "check_frame_mask", "encode_frames",
           "load_vision_encoder", "media_tokens"]
