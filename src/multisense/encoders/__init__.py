"""Sensor encoders, all following one protocol: forward(x, mask) -> EncoderOutput(tokens [N, S, D], mask).
The registered ones (`ENCODERS`): vision, tactile, force_torque, audio."""

from .audio import AudioEncoder, LogMelSpectrogram
from .base import (
                   EncoderOutput,
                   HFEncoder,
                   MediaStandardization,
                   ModuleEncoder,
                   as_encoder,
                   check_frame_mask,
                   encode_frames,
                   load_vision_encoder,
                   media_statistics,
                   media_tokens,
)
from .force_torque import ForceTorqueEncoder
from .registry import ENCODERS, build_encoder, get_encoder, register_encoder
from .tactile import TactileEncoder
from .vision import VisionEncoder

__all__ = ["EncoderOutput", "HFEncoder", "MediaStandardization", "ModuleEncoder", "as_encoder", "check_frame_mask",
           "encode_frames", "load_vision_encoder", "media_statistics", "media_tokens", "ENCODERS", "build_encoder",
           "get_encoder", "register_encoder", "AudioEncoder", "LogMelSpectrogram", "ForceTorqueEncoder",
           "TactileEncoder", "VisionEncoder"]
