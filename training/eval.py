"""Held-out evaluation of the fused model: caption loss with the matching image and with a shuffled one.

The "image gap" is matched loss / shuffled loss: 1.0 when the adapters ignore the image, lower when the
captions are predicted better from their own image than from another one. Shuffling rolls the images of
each held-out batch by one place, so every caption gets some other row's image.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vlmforge.training.model.config import IGNORE_INDEX

_WORD = re.compile(r"[a-z0-9]+")


def word_f1(a: str | None, b: str) -> float:
    """F1 of two captions' word sets (lower case); 0 for a missing caption."""
    x, y = set(_WORD.findall((a or "").lower())), set(_WORD.findall(b.lower()))
    common = len(x & y)
    return 2 * common / (len(x) + len(y)) if common else 0.0


@torch.no_grad()
def caption_loss(model: Any, batches: list[dict[str, Any]], shuffle_images: bool = False) -> float:
    """Token-weighted mean caption loss over `batches` (model: FusionModel or its DeepSpeed engine)."""
    total, count = 0.0, 0
    for batch in batches:
        images = batch["images"]
        if shuffle_images and images is not None:
            images = images.roll(1, dims=0)
        out = model(input_ids=batch["input_ids"], images=images, labels=batch["labels"])
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


def image_gap(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    matched = caption_loss(model, batches)
    shuffled = caption_loss(model, batches, shuffle_images=True)
    return {"loss": matched, "loss_shuffled": shuffled, "image_gap": matched / shuffled}

