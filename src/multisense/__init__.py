"""multisense: multimodal language models beyond the projector.

    import multisense as ms
    ms.nn.PerceiverResampler(dim=1024)            # [B, M, F, S, D] -> [B, M, R, D]
    model = ms.FlamingoModel.from_lm(lm, vision_encoder=clip, tokenizer=tok, cross_attn_every=4)
    baseline = ms.LlavaModel.from_lm(lm, vision_encoder=clip, tokenizer=tok)   # the projector
    pali = ms.PaLIModel.from_lm(t5, vision_encoder=clip, tokenizer=tok)        # encoder-decoder, all trained
"""

from . import encoders, nn
from .models import (
                     AutoModel,
                     FlamingoCache,
                     FlamingoConfig,
                     FlamingoModel,
                     FusionConfig,
                     FusionModel,
                     LlavaCache,
                     LlavaConfig,
                     LlavaModel,
                     PaLIConfig,
                     PaLIModel,
)

__version__ = "0.1.0"
__all__ = ["encoders", "nn", "AutoModel", "FlamingoCache", "FlamingoConfig", "FlamingoModel", "LlavaCache", "LlavaConfig",
           "LlavaModel", "FusionConfig", "FusionModel", "PaLIConfig",
           "PaLIModel", "__version__"]
