"""The vision-language model: ViT encoder, projection head, Llama decoder, gated cross-attention fusion."""

from vlmforge.training.model.config import (
    DecoderConfig,
    FusionConfig,
    ModelConfig,
    ProjectionConfig,
    RopeScaling,
    TrainableConfig,
    VideoConfig,
    VisionConfig,
    get_config,
)
from vlmforge.training.model.decoder import Decoder
from vlmforge.training.model.fusion import FusionModel, ModelOutput, media_attention_mask
from vlmforge.training.model.perceiver import PerceiverResampler
from vlmforge.training.model.vision import VisionEncoder, VisionProjection

__all__ = [
    "Decoder",
    "DecoderConfig",
    "FusionConfig",
    "FusionModel",
    "ModelConfig",
    "ModelOutput",
    "PerceiverResampler",
    "ProjectionConfig",
    "RopeScaling",
    "TrainableConfig",
    "VideoConfig",
    "VisionConfig",
    "VisionEncoder",
    "VisionProjection",
    "get_config",
    "media_attention_mask",
]
