"""Held-out evaluation of the fused model: caption loss with the matching image and with a shuffled one.

The "image gap" is matched loss / shuffled loss: 1.0 when the adapters ignore the image, lower when the
captions are predicted better from their own image than from another one. Shuffling rolls the images of
each held-out batch by one place, so every caption gets some other row's image (with Mllama tiles the
whole image: its tiles, aspect ratio id and mask).

The "video gap" is the same with clips (task video), and ``time_shuffled_gap`` is the loss with each clip's
own frames in a fixed random time order over the other-clip loss: when the adapters use the order of the
frames (a square moving left to right, not right to left) it stays closer to 1 than the video gap.
Batches of rows with ``time_spans`` (data.py ``time_tokens``: the caption words whose truth depends on the
frames' order, as the sample clips' ground truth marks them, and a bare space just before one) also give
both figures on those tokens alone (``timed_*``) and on the rest of those captions (``static_*``): most
words of a caption may be told by any single frame, so the whole-caption figure can hide whether the order
is read.

In a training run the held-out batches stay on the CPU and go to the device one at a time
(``EvalBatches``); for the fused model each rank evaluates every world-th batch and the ranks' sums are
added, which gives the single-process result (up to the order of the additions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmforge.training.model.config import IGNORE_INDEX
from vlmforge.training.model.tiling import pad_tiles

_WORD = re.compile(r"[a-z0-9]+")


def word_f1(a: str | None, b: str) -> float:
    """F1 of two captions' word sets (lower case); 0 for a missing caption."""
    x, y = set(_WORD.findall((a or "").lower())), set(_WORD.findall(b.lower()))
    common = len(x & y)
    return 2 * common / (len(x) + len(y)) if common else 0.0


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def combine_sources(per_source: dict[str, dict[str, float]]) -> dict[str, float]:
    """One source's figures as they are; a mix's as ``NAME/key`` each, and under the plain keys the mean of
    those every source has."""
    if len(per_source) == 1:
        return next(iter(per_source.values()))
    shared = set.intersection(*(set(r) for r in per_source.values()))
    first = next(iter(per_source.values()))
    mean = {k: float(np.mean([r[k] for r in per_source.values()])) for k in first if k in shared}
    return mean | {f"{name}/{k}": v for name, r in per_source.items() for k, v in r.items()}


class EvalBatches:
    """A rank's held-out batches: kept on the CPU, moved to ``device`` one batch at a time.

    With ``shard`` the rank keeps every world-th batch (from its rank on) and ``padded`` makes every rank
    run as many forward passes: ZeRO-3 gathers parameters in each forward, so a rank that stopped early
    would leave the others waiting. Iterating gives the rank's own batches only.
    """

    def __init__(
        self,
        batches: list[dict[str, Any]],
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        shard: bool = False,
    ) -> None:
        self.device, self.world = device, world if shard else 1
        self.own = batches[rank :: self.world] if shard else list(batches)
        self.steps = -(-len(batches) // self.world)  # forward passes per rank
        self.filler = batches[0] if len(self.own) < self.steps else None

    def __len__(self) -> int:
        return len(self.own)

    def __bool__(self) -> bool:
        return self.steps > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (to_device(b, self.device) for b in self.own)

    def padded(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(batch on the device, whether it counts): the rank's batches, then repeats not counted."""
        for batch in self.own:
            yield to_device(batch, self.device), True
        for _ in range(self.steps - len(self.own)):
            yield to_device(self.filler, self.device), False

    def total(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks that share the batches."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def batch_images(batch: dict[str, Any], shuffle: bool = False) -> dict[str, Tensor | None]:
    """A batch's images as the model takes them: ``images``, and for Mllama tiles (flat in the batch,
    training/data.py ``collate``) padded to ``max_num_tiles`` with ``aspect_ratio_ids`` and ``_mask``.

    ``shuffle``: every row gets the previous row's image, a tiled one whole (its tiles, count and id)."""
    images = batch["images"]
    if "num_tiles" not in batch:
        return {"images": images.roll(1, dims=0) if shuffle and images is not None else images}
    images, mask = pad_tiles(images, batch["num_tiles"], batch["max_num_tiles"])
    tiled = {"images": images, "aspect_ratio_ids": batch["aspect_ratio_ids"], "aspect_ratio_mask": mask}
    return {k: v.roll(1, dims=0) for k, v in tiled.items()} if shuffle else tiled


@torch.no_grad()
def loss_sums(
    model: Any,
    batches: list[dict[str, Any]] | EvalBatches,
    shuffle_images: bool = False,
    videos: Callable[[Tensor], Tensor] | None = None,
) -> list[float]:
    """Caption loss summed over `batches` and the tokens it is over, then the same on the ``time_tokens``
    marked 1 (timed) and 0 (static) where batches carry them: [loss, tokens, timed loss, timed tokens,
    static loss, static tokens]; over all ranks' shards for sharded ``EvalBatches``. See caption_loss."""
    sums = [0.0] * 6
    weighted = batches.padded() if isinstance(batches, EvalBatches) else ((b, True) for b in batches)
    for batch, counted in weighted:
        media = batch_images(batch, shuffle_images)
        if batch.get("videos") is not None:
            media["videos"] = videos(batch["videos"]) if videos else batch["videos"]
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], **media)
        if not counted:
            continue
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        sums[0] += float(out.loss) * n
        sums[1] += n
        classes = batch.get("time_tokens")
        if classes is not None:
            per = out.token_loss.float()  # aligned with labels, NaN where no loss is taken
            for at, value in ((2, 1), (4, 0)):
                where = (classes == value) & ~per.isnan()
                sums[at] += float(per[where].sum())
                sums[at + 1] += int(where.sum())
    if isinstance(batches, EvalBatches):
        sums = batches.total(sums)
    return sums


def caption_loss(
    model: Any,
    batches: list[dict[str, Any]] | EvalBatches,
    shuffle_images: bool = False,
    videos: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Token-weighted mean caption loss over `batches` (model: FusionModel or its DeepSpeed engine); over
    all ranks' shards for sharded ``EvalBatches``.

    ``videos``: applied to each batch's clips (B, F, C, H, W) first, e.g. to give rows other clips."""
    total, count = loss_sums(model, batches, shuffle_images, videos)[:2]
    return total / max(count, 1)


def image_gap(model: Any, batches: list[dict[str, Any]] | EvalBatches) -> dict[str, float]:
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


def video_gap(model: Any, batches: list[dict[str, Any]] | EvalBatches) -> dict[str, float]:
    """Video gap and time-shuffled gap over whole captions; with ``time_tokens`` in the batches, also on
    the timed tokens (``timed_*``) and the static ones (``static_*``) of the rows that mark them."""
    runs = (None, other_clip, time_shuffled)
    matched, other, shuffled = (loss_sums(model, batches, videos=f) for f in runs)
    out = {}
    for prefix, at in (("", 0), ("timed_", 2), ("static_", 4)):
        if not matched[at + 1]:
            continue
        m, o, s = (x[at] / x[at + 1] for x in (matched, other, shuffled))
        out |= {
            f"{prefix}loss": m,
            f"{prefix}loss_other_clip": o,
            f"{prefix}loss_time_shuffled": s,
            f"{prefix}video_gap": m / o,
            f"{prefix}time_shuffled_gap": s / o,
        }
    return out
