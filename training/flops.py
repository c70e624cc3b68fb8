"""FLOPs per step and model FLOPs utilisation (MFU).

Each top-level component of the model costs its parameter count times the tokens it processes (text
tokens for the decoder and adapters, image tokens for the encoder), times 6 when it trains (forward,
input and weight gradients) and 4 when it is frozen but gradients flow through it (forward and input
gradients, no weight gradients). Attention scores are not counted, as in the usual 6N estimate.

MFU counts what is computed (``computed_counts``: every position of the padded rows, every image the
encoder runs on, each as its views or Mllama tiles, padding tiles included: ``encoder_tokens_per_image``);
throughput counts real tokens (a batch's ``num_tokens``, no padding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmforge.training.model.config import VisionConfig

# Dense bf16 peak TFLOP/s per device, by name fragment (the first match wins).
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))


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
    sizes: dict[str, tuple[int, int]], tokens_of: dict[str, str], counts: dict[str, float]
) -> float:
    """FLOPs of one forward+backward over `counts` tokens ({"text": n, "image": m})."""
    total = 0.0
    for name, (trained, frozen) in sizes.items():
        tokens = counts.get(tokens_of.get(name, ""), 0.0)
        total += (6 * trained + 4 * frozen) * tokens
    return total


def encoder_tokens_per_image(vision: VisionConfig) -> int:
    """Tokens the encoder runs on for one image: every view (thumbnail and tiles, ``tile_grid``) or every
    Mllama tile (``max_num_tiles``: the model pads each image to all of them) times a view's tokens."""
    return vision.num_views * vision.max_num_tiles * vision.num_tokens


def computed_counts(batch: dict[str, Any], tokens_per_image: int) -> dict[str, float]:
    """What a micro-batch (training/data.py) makes the model compute, for ``step_flops``: every position of
    its rows, padding included, and the tokens of every image the encoder runs on (placeholders too)."""
    return {
        "text": float(batch["input_ids"].numel()),
        "image": float(batch.get("computed_images", 0) * tokens_per_image),
    }


def peak_flops(precision: str, override_tflops: float | None = None) -> float | None:
    """Per-device peak FLOP/s for MFU; None on CPU or an unknown device."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available() or precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)
