"""Building blocks: one attention, one mask builder, gates, feed-forward, resampler, gated blocks,
the LLaVA projector, the Perceiver."""

from .attention import Attention, attend, attend_chunks
from .feedforward import FeedForward
from .gated_xattn import GatedCrossAttentionBlock
from .gates import TanhGate
from .masks import MediaRouting, check_media_counts, media_index, media_visibility, prefix_lm_mask
from .perceiver import Modality, Perceiver, PerceiverDecoder, TransformerLayer
from .posemb import FourierFeatures, FrameEmbedding
from .projector import Projector
from .resampler import PerceiverResampler

__all__ = ["Attention", "attend", "FeedForward", "GatedCrossAttentionBlock", "TanhGate", "MediaRouting",
           "check_media_counts", "media_index", "media_visibility", "prefix_lm_mask", "FrameEmbedding",
           "PerceiverResampler", "Projector", "attend_chunks", "Modality", "Perceiver",
           "PerceiverDecoder", "FourierFeatures", "TransformerLayer"]
