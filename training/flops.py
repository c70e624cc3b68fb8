"""FLOPs per step and model FLOPs utilisation (MFU).

Each top-level component of the model costs its parameter count times the tokens it processes (text
tokens for the decoder and adapters, image tokens for the encoder), times 6 when it trains (forward,
input and weight gradients), 4 when it is frozen but gradients flow through it (forward and input
gradients) and 2 when it is frozen at the model's input (the encoder of stage 1: forward only). Attention
adds 4 FLOPs per query-key pair and unit of width in the forward pass (scores and weighted sum), times 3
where gradients flow through it: the decoder's causal self-attention, the adapters' cross-attention
(text positions x image tokens), the encoder's and the projection head's attention over each image.

MFU counts what is computed (``computed_counts``: every position of the padded rows, every image the
encoder runs on, each as its views or Mllama tiles, padding tiles included: ``encoder_tokens_per_image``);
throughput counts real tokens (a batch's ``num_tokens``, no padding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmforge.training.model.config import ModelConfig, VisionConfig
from vlmforge.training.model.decoder import length_buckets

# Dense bf16 peak TFLOP/s per device, by name fragment (the first match wins).
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))


# The keys of ``computed_counts``: positions, image tokens, and query-key pairs of attention.
COUNTED = ("text", "image", "self", "cross", "image_pairs")


def component_sizes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Top-level component -> (trainable, frozen) parameter counts (ZeRO-3 partitions counted whole)."""
    sizes: dict[str, tuple[int, int]] = {}
    for name, child in model.named_children():
        trained = frozen = 0
        for p in child.parameters():
            n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
            if p.requires_grad:
                trained += n
            else:
                frozen += n
        sizes[name] = (trained, frozen)
    return sizes


def step_flops(
    sizes: dict[str, tuple[int, int]],
    tokens_of: dict[str, str],
    counts: dict[str, float],
    first: tuple[str, ...] = (),
    attention: dict[str, tuple[str, int]] | None = None,
) -> float:
    """FLOPs of one forward+backward over ``counts``: tokens ({"text": n, "image": m}) and, for
    ``attention`` (component -> (kind of pairs, width summed over its layers)), query-key pairs
    ({"self": ..., "cross": ..., "image_pairs": ...}, ``computed_counts``). ``first``: the components at the
    model's input, which cost only their forward pass when frozen."""
    total = 0.0
    flows = {name: trained > 0 or name not in first for name, (trained, _) in sizes.items()}
    for name, (trained, frozen) in sizes.items():
        tokens = counts.get(tokens_of.get(name, ""), 0.0)
        total += (6 * trained + (4 if flows[name] else 2) * frozen) * tokens
    for name, (pairs, width) in (attention or {}).items():
        if name in sizes:
            total += 4 * width * counts.get(pairs, 0.0) * (3 if flows[name] else 1)
    return total


def decoder_attention(mc: ModelConfig) -> dict[str, tuple[str, int]]:
    """``step_flops``'s attention table of the decoder alone: its causal self-attention."""
    d = mc.decoder
    return {"decoder": ("self", d.num_layers * d.num_heads * d.head_dim)}


def fusion_attention(mc: ModelConfig) -> dict[str, tuple[str, int]]:
    """``step_flops``'s attention table of the fused model: component -> (pairs, width x layers)."""
    d = mc.decoder
    return {
        "encoder": ("image_pairs", mc.vision.num_layers * mc.vision.dim),
        "projection": ("image_pairs", mc.projection.num_layers * mc.vision.dim),
        **decoder_attention(mc),
        "fusion": ("cross", mc.num_fusion_layers * d.num_heads * d.head_dim),
    }


def encoder_tokens_per_image(vision: VisionConfig) -> int:
    """Tokens the encoder runs on for one image: every view (thumbnail and tiles, ``tile_grid``) or every
    Mllama tile (``max_num_tiles``: the model pads each image to all of them) times a view's tokens."""
    return vision.num_views * vision.max_num_tiles * vision.num_tokens


def computed_counts(batch: dict[str, Any], vision: VisionConfig) -> dict[str, float]:
    """What a micro-batch (training/data.py) makes the model compute, for ``step_flops``: every position of
    its rows, padding included, the tokens of every image the encoder runs on (placeholders too), and the
    query-key pairs of attention: causal within a row, or for packed rows within each sample padded to
    its length bucket's longest (``decoder.length_buckets``: they attend sample by sample); text positions x
    the image tokens they attend to; each image's tokens squared (per view, or over all Mllama tiles)."""
    ids = batch["input_ids"]
    images = float(batch.get("computed_images", 0))
    per_image = encoder_tokens_per_image(vision)
    per_view = vision.max_num_tiles * vision.num_tokens
    if batch.get("segment_ids") is not None:  # (samples, padded length) per bucket, as the model runs them
        segments = batch["segment_ids"]
        lengths = [int(n) for row in segments for n in row[row >= 0].unique(return_counts=True)[1]]
        groups = [(len(g), lengths[g[0]]) for g in length_buckets(lengths)]
    else:
        groups = [tuple(ids.shape)]
    has_images = batch.get("images") is not None
    return {
        "text": float(ids.numel()),
        "image": images * per_image,
        "self": float(sum(n * length * (length + 1) / 2 for n, length in groups)),
        "cross": float(sum(n * length for n, length in groups) * per_image) if has_images else 0.0,
        "image_pairs": images * vision.num_views * per_view**2,
    }


def peak_flops(precision: str, override_tflops: float | None = None) -> float | None:
    """Per-device peak FLOP/s for MFU; None on CPU or an unknown device."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available() or precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)
