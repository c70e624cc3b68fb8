"""The vision-language model: ViT encoder, projection head, Llama decoder, gated cross-attention fusion."""

from training.model.config import (
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
from training.model.decoder import Decoder
from training.model.fusion import FusionModel, ModelOutput, media_attention_mask
from training.model.perceiver import PerceiverResampler
from training.model.vision import VisionEncoder, VisionProjection

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
