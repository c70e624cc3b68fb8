"""Retrieval and zero-shot metrics of a contrastive model on an evaluation set.

Embeddings are L2-normalised, so similarity is a dot product. Recall@k counts a query as a hit when its
own pair is among the k best candidates; ties count against it (the pair ranks after every candidate that
scores at least as high). Retrieval runs within fixed pools of about `pool` pairs (consecutive in the eval
set's id order, sizes differing by at most one), so a figure means the same thing on eval sets of different
sizes and chance is k / pool. Zero-shot classification compares an image with one embedding per class: the
normalised mean of the class's prompt embeddings (CLIP's prompt ensembling).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmforge.training.data import SampleFormat, collate, make_sample

DEFAULT_KS = (1, 5)
_RNG = np.random.default_rng(0)  # make_sample's caption choice; unused (synthetic_caption_prob is 0)


def ranks(sim: Tensor) -> Tensor:
    """Rank of the matching candidate (the diagonal) for each query row: 0 is best, ties count against."""
    return (sim >= sim.diagonal()[:, None]).sum(dim=1) - 1


def pools(n: int, pool: int) -> list[np.ndarray]:
    """Consecutive index pools of about `pool` items covering 0..n-1 (one pool when n <= pool)."""
    count = max(n // pool, 1) if pool > 0 else 1
    return np.array_split(np.arange(n), count)


def retrieval(image: Tensor, text: Tensor, pool: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k of paired embeddings (row i of each is pair i)."""
    i2t, t2i = [], []
    for idx in pools(len(image), pool):
        sim = image[idx] @ text[idx].T
        i2t.append(ranks(sim))
        t2i.append(ranks(sim.T))
    out: dict[str, float] = {}
    for name, r in (("i2t", torch.cat(i2t)), ("t2i", torch.cat(t2i))):
        for k in ks:
            out[f"{name}_r{k}"] = float((r < k).float().mean())
    return out


def class_embeddings(prompt_embeddings: Tensor) -> Tensor:
    """(classes, prompts, dim) normalised prompt embeddings -> (classes, dim) normalised class embeddings."""
    return torch.nn.functional.normalize(prompt_embeddings.mean(dim=1), dim=-1)


def zero_shot(image: Tensor, classes: Tensor, labels: Tensor) -> float:
    """Share of images whose most similar class embedding is their label's."""
    return float(((image @ classes.T).argmax(dim=1) == labels).float().mean())


def prompts_for(label: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: each template with {label} and {a} (its article) filled in."""
    article = "an" if label[:1].lower() in "aeiou" else "a"
    return [t.format(label=label, a=article) for t in templates]


@torch.no_grad()
def embed_images(model: Any, fmt: SampleFormat, images: list[bytes], batch: int = 256) -> Tensor:
    """Normalised image embeddings (CPU), `batch` images at a time."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(images), batch):
        samples = [make_sample({"id": "", "image": b, "caption": ""}, fmt, _RNG)
                   for b in images[start : start + batch]]
        pixels = collate(samples, fmt.eos_id, fmt.image_size)["images"].to(device)
        out.append(model.embed_image(pixels).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: Any, fmt: SampleFormat, texts: list[str], batch: int = 256) -> Tensor:
    """Normalised text embeddings (CPU), `batch` texts at a time."""
    out = []
    device = next(model.parameters()).device
    text_only = SampleFormat(fmt.bos_id, fmt.eos_id, None, None, fmt.max_tokens, 0.0, fmt.encode)
    for start in range(0, len(texts), batch):
        samples = [make_sample({"id": "", "image": None, "caption": t}, text_only, _RNG)
                   for t in texts[start : start + batch]]
        b = collate(samples, fmt.eos_id, None)
        out.append(model.embed_text(b["input_ids"].to(device), b["labels"].to(device)).float().cpu())
    return torch.cat(out)
