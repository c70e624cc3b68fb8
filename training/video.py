"""Task ``video``: the video adapters on curated video-caption rows, after the image stages.

A curated video row carries ``frames`` (JPEG bytes at the sampled times, in time order). Each clip is
resampled uniformly in time to ``video.num_frames`` frames at the encoder's input size (short clips repeat
frames); the sequence is ``<|begin_of_text|> <|video|> caption <|end_of_text|>`` with the loss on the
caption and EOS. The frames go through the image encoder and projection head, the Perceiver Resampler
merges each group of ``video.frames_per_group`` consecutive frames into latents, and the video
cross-attention layers (interleaved with the image ones, fusion.py) read them. The run starts from an
image-stage output (``model.init_from``); by default only the video adapters train. Rows without frames
(images or text only) get an all-zero clip that no token sees, so every batch runs the same layers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import TrainConfig
from vlmforge.training.data import SampleFormat
from vlmforge.training.eval import video_gap
from vlmforge.training.model.config import ModelConfig, TrainableConfig, VideoConfig
from vlmforge.training.model.fusion import FusionModel, ModelOutput
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.vlm import FIRST, TOKENS, attention_table, heldout_gap  # noqa: F401  (FLOP count's)
from vlmforge.training.vlm import exports as vlm_exports
from vlmforge.training.vlm import sample_format as image_sample_format

# What trains when model.trainable leaves a field unset: the video adapters only.
DEFAULT_TRAINABLE = {"encoder": False, "projection": False, "decoder": False, "fusion": False, "video": True}


def video_model_config(cfg: TrainConfig, mc: ModelConfig) -> ModelConfig:
    """The model config with a video path (Llama 3's defaults when the preset has none) and the run's
    frame count and group size."""
    v = mc.video or VideoConfig()
    num_frames = cfg.video.num_frames or v.num_frames
    group = cfg.video.frames_per_group or v.group_size
    if num_frames % group:
        raise ConfigError(
            f"video.frames_per_group: {group} does not divide video.num_frames {num_frames} "
            "(set both, or neither, against the preset's)"
        )
    return dataclasses.replace(mc, video=dataclasses.replace(v, num_frames=num_frames, group_size=group))


def trainable(cfg: TrainConfig) -> TrainableConfig:
    """``DEFAULT_TRAINABLE``, with the fields the config sets explicitly."""
    section = cfg.model.trainable
    chosen = {**DEFAULT_TRAINABLE, **{k: getattr(section, k) for k in section.model_fields_set}}
    return TrainableConfig(**chosen)


def build_model(cfg: TrainConfig, model_cfg: ModelConfig) -> FusionModel:
    return FusionModel(dataclasses.replace(model_cfg, trainable=trainable(cfg)))


def sample_format(cfg: TrainConfig, model_cfg: ModelConfig, tok: TextTokenizer) -> SampleFormat:
    if model_cfg.video is None:
        raise ConfigError("task video: the model has no video path (model.preset)")
    return dataclasses.replace(
        image_sample_format(cfg, model_cfg, tok),
        video_token_id=model_cfg.video_token_id,
        video_frames=model_cfg.video.num_frames,
        encode_offsets=tok.encode_offsets,  # rows' time_spans -> the eval's figures on time-dependent tokens
    )


def output(model: Any, batch: dict[str, Any]) -> ModelOutput:
    return model(
        input_ids=batch["input_ids"], images=batch["images"], videos=batch["videos"], labels=batch["labels"]
    )


def loss(model: Any, batch: dict[str, Any]) -> Tensor:
    return output(model, batch).loss


def evaluate(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    return video_gap(model, batches)


exports = vlm_exports  # the trained parameters; frozen ones stay in the files the run started from


def evaluate_weights(
    config_path: str | Path | None, weights: str | Path, overrides: list[str]
) -> dict[str, float]:
    """Video gap of a trained weights file on the held-out rows of the config's data."""
    return heldout_gap(config_path, weights, overrides, sample_format, video_gap)
