"""Task ``vlm``: the fused model on image-caption pairs (stage 1 at low resolution, stage 2 at higher).

The sequence is ``<|begin_of_text|> <|image|> caption <|end_of_text|>``, or with ``data.image_first``
Mllama's ``<|image|> <|begin_of_text|> ...`` (every text token sees the image), with the loss on the caption
and EOS only; with ``data.packing`` several such samples share a row (training/data.py). The decoder stays
frozen (``model.trainable``); encoder, projection head and adapters train. Stage 2 reads its higher
resolution as a thumbnail plus tiles at the encoder's resolution (``model.tile_grid``), or as Mllama's
aspect-ratio tiles (``model.max_num_tiles``: batches carry the real tiles flat, padded on the device by
``eval.batch_images``); a ``model.image_size`` other than the encoder's instead interpolates position
embeddings on load (training/weights.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlmforge.training.config import TrainConfig, load_train_config
from vlmforge.training.data import SampleFormat, data_index, heldout_batches, source_indexes
from vlmforge.training.eval import batch_images, combine_sources, image_gap, to_device
from vlmforge.training.flops import fusion_attention
from vlmforge.training.grounding import grounding_eval
from vlmforge.training.model.build import build_fusion_model
from vlmforge.training.model.config import ModelConfig, TrainableConfig
from vlmforge.training.model.fusion import FusionModel, ModelOutput
from vlmforge.training.model.hf import load_hf_sources
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.weights import load_fusion_model

# For the FLOP count (training/flops.py): what each top-level component processes, the components at the
# model's input (forward only when frozen), and the attention the model computes.
TOKENS = {"encoder": "image", "projection": "image", "decoder": "text", "fusion": "text", "video": "text"}
FIRST = ("encoder",)
attention_table = fusion_attention


def build_model(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    sources: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
    load: Callable[[FusionModel, dict[str, str]], None] = load_hf_sources,
    partition: Callable[[list[nn.Parameter]], None] | None = None,
) -> FusionModel:
    """The fused model in ``dtype``, with the HF checkpoint dirs ``sources`` loaded (model/build.py: no
    full fp32 copy of what they fill; with ``partition``, ZeRO-3 partitions module by module)."""
    model_cfg = dataclasses.replace(model_cfg, trainable=TrainableConfig(**cfg.model.trainable.model_dump()))
    return build_fusion_model(model_cfg, sources, dtype, load, partition)


def sample_format(cfg: TrainConfig, model_cfg: ModelConfig, tok: TextTokenizer) -> SampleFormat:
    return SampleFormat(
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        image_token_id=model_cfg.image_token_id,
        image_size=model_cfg.vision.input_size,
        max_tokens=cfg.data.max_tokens,
        synthetic_caption_prob=cfg.data.synthetic_caption_prob,
        encode=tok.encode,
        image_first=cfg.data.image_first,
        packing=cfg.data.packing,
        max_num_tiles=model_cfg.vision.max_num_tiles,
    )


PACKED_KEYS = ("encoder_mask", "position_ids", "segment_ids")  # in packed batches (data.collate_packed)


def output(model: Any, batch: dict[str, Any]) -> ModelOutput:
    """The caption loss of a training batch and the loss at each label; Mllama tiles arrive flat and are
    padded here (on the device)."""
    packed = {k: batch[k] for k in PACKED_KEYS if k in batch}
    return model(input_ids=batch["input_ids"], labels=batch["labels"], **batch_images(batch), **packed)


def loss(model: Any, batch: dict[str, Any]) -> Tensor:
    return output(model, batch).loss


def evaluate(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    return image_gap(model, batches)


def exports(model: nn.Module) -> dict[str, Any]:
    """The trained parameters; the frozen decoder stays in the file the run was initialised from."""
    return {"model.safetensors": lambda name, p: p.requires_grad}


def heldout_gap(
    config_path: str | Path | None,
    weights: str | Path,
    overrides: list[str],
    make_format: Callable[[TrainConfig, ModelConfig, TextTokenizer], SampleFormat],
    gap: Callable[[Any, list[dict[str, Any]]], dict[str, float]],
    extra: Callable[..., dict[str, float]] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """`gap` of a trained weights file on the held-out rows of the config's data (one process, the model on
    ``device``), source by source; ``extra(model, index, fmt, decode, max_rows)`` adds figures of its own
    per source."""
    cfg = load_train_config(config_path, overrides)
    cfg.require("data.path", "tokenizer")
    model = load_fusion_model(weights).eval().to(device)
    tok = TextTokenizer(cfg.tokenizer)
    fmt = make_format(cfg, model.config, tok)
    rows, mb = cfg.eval.max_rows, cfg.eval.micro_batch_size
    per_source = {}
    for name, index in source_indexes(data_index(cfg.data, "heldout")).items():
        batches = [to_device(b, torch.device(device)) for b in heldout_batches(index, fmt, rows, mb)]
        per_source[name] = gap(model, batches)
        if extra is not None:
            per_source[name] |= extra(model, index, fmt, tok.decode, rows)
    return combine_sources(per_source)


def evaluate_weights(
    config_path: str | Path | None,
    weights: str | Path,
    overrides: list[str],
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Image gap of a trained weights file on the held-out rows of the config's data; for rows whose
    captions give boxes, the share of boxes found (``grounding_eval``)."""
    return heldout_gap(config_path, weights, overrides, sample_format, image_gap, grounding_eval, device)
