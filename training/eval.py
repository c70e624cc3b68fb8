"""Held-out evaluation of the fused model: caption loss with the matching image and with a shuffled one.

The "image gap" is matched loss / shuffled loss: 1.0 when the adapters ignore the image, lower when the
captions are predicted better from their own image than from another one. Shuffling rolls the images of
each held-out batch by one place, so every caption gets some other row's image.

The "video gap" is the same with clips (task video), and ``time_shuffled_gap`` is the loss with each clip's
own frames in a fixed random time order over the other-clip loss: when the adapters use the order of the
frames (a square moving left to right, not right to left) it stays closer to 1 than the video gap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vlmforge.training.model.config import IGNORE_INDEX

_WORD = re.compile(r"[a-z0-9]+")


def word_f1(a: str | None, b: str) -> float:
    """F1 of two captions' word sets (lower case); 0 for a missing caption."""
    x, y = set(_WORD.findall((a or "").lower())), set(_WORD.findall(b.lower()))
    common = len(x & y)
    return 2 * common / (len(x) + len(y)) if common else 0.0


@torch.no_grad()
def caption_loss(
    model: Any,
    batches: list[dict[str, Any]],
    shuffle_images: bool = False,
    videos: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Token-weighted mean caption loss over `batches` (model: FusionModel or its DeepSpeed engine).

    ``videos``: applied to each batch's clips (B, F, C, H, W) first, e.g. to give rows other clips."""
    total, count = 0.0, 0
    for batch in batches:
        images = batch["images"]
        if shuffle_images and images is not None:
            images = images.roll(1, dims=0)
        media = {}
        if batch.get("videos") is not None:
            media["videos"] = videos(batch["videos"]) if videos else batch["videos"]
        out = model(input_ids=batch["input_ids"], images=images, labels=batch["labels"], **media)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


def image_gap(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    matched = caption_loss(model, batches)
    shuffled = caption_loss(model, batches, shuffle_images=True)
    return {"loss": matched, "loss_shuffled": shuffled, "image_gap": matched / shuffled}



def other_clip(videos: Tensor) -> Tensor:
    """Every row gets the next row's clip."""
    return videos.roll(1, dims=0)


def time_shuffled(videos: Tensor) -> Tensor:
    """Every clip's frames in one fixed random order (seeded: the same in every evaluation)."""
    order = torch.randperm(videos.shape[1], generator=torch.Generator().manual_seed(0))
    return videos[:, order.to(videos.device)]


def video_gap(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    matched = caption_loss(model, batches)
    other = caption_loss(model, batches, videos=other_clip)
    shuffled = caption_loss(model, batches, videos=time_shuffled)
    return {
        "loss": matched,
        "loss_other_clip": other,
        "loss_time_shuffled": shuffled,
        "video_gap": matched / other,
        "time_shuffled_gap": shuffled / other,
    }
