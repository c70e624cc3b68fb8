"""Per-source training loss of a mix (``data.sources``), from the loss the model took at each label.

Per source, the sum of its labels' losses and their count: summed over a step's micro-batches (gradient
accumulation) and over the ranks before dividing, the step's figure is the token-weighted mean over all of
them, exactly (the step's ``loss`` is instead the mean of the micro-batch means).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def sample_of_label(batch: dict[str, Any]) -> Tensor:
    """(B, S) long: the index in ``batch["sources"]`` of the sample each position belongs to, -1 for
    padding of packed rows (``segment_ids``: several samples a row, numbered row after row)."""
    labels = batch["labels"]
    segments = batch.get("segment_ids")
    if segments is None:
        return torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    per_row = segments.max(dim=1).values + 1
    first = torch.cumsum(per_row, 0) - per_row
    return torch.where(segments >= 0, first[:, None] + segments, -1)


def source_sums(token_loss: Tensor, batch: dict[str, Any], num_sources: int) -> Tensor:
    """(2, num_sources) float64: each source's summed label losses and its number of labels;
    ``token_loss`` (B, S) is NaN where no loss is taken (``fusion.token_losses``)."""
    taken = ~token_loss.isnan()
    sources = torch.tensor(batch["sources"], dtype=torch.long, device=token_loss.device)
    which = sources[sample_of_label(batch)[taken]]
    out = torch.zeros(2, num_sources, dtype=torch.float64, device=token_loss.device)
    out[0].index_add_(0, which, token_loss[taken].double())
    out[1].index_add_(0, which, torch.ones_like(which, dtype=torch.float64))
    return out


def source_means(totals: list[float], names: list[str]) -> dict[str, float]:
    """``loss/NAME`` from flattened ``source_sums`` totals; a source without labels this step is left out."""
    n = len(names)
    sums, counts = totals[:n], totals[n:]
    return {f"loss/{name}": s / c for name, s, c in zip(names, sums, counts, strict=True) if c > 0}
