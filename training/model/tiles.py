"""Mllama's aspect-ratio tile embeddings and the attention mask across the tiles of an image.

An image arrives as ``max_num_tiles`` tiles (the real ones first, row-major, then padding tiles), with its
``aspect_ratio_id`` (which grid it was cut into, ``VisionConfig.supported_aspect_ratios``) and
``aspect_ratio_mask`` (which tiles are real). Each aspect ratio has a learned table:

- ``AspectRatioEmbedding``: one vector per tile, added to every token of the tile, scaled by tanh(gate).
  Used before the class token is added (pre-tile) and after the encoder's layers (post-tile).
- ``TilePositionEmbedding``: Mllama's gated position embedding, (1 - tanh(gate)) * the shared position
  table + tanh(gate) * a table per tile and token.

Names and shapes follow transformers' ``MllamaVisionModel``, so checkpoints convert one to one (hf.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmforge.training.model.config import VisionConfig


class AspectRatioEmbedding(nn.Module):
    """Gated per-tile vector for each aspect ratio: x (N, T, L, D) + tanh(gate) * table[id] (N, T, 1, D)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.max_num_tiles = cfg.max_num_tiles
        num_ids = len(cfg.supported_aspect_ratios) + 1  # id 0: no image
        self.embedding = nn.Embedding(num_ids, cfg.max_num_tiles * cfg.dim)
        self.gate = nn.Parameter(torch.zeros(1))  # zero: a model fresh from the 1-tile stage ignores it

    def forward(self, x: Tensor, aspect_ratio_ids: Tensor) -> Tensor:
        table = self.embedding(aspect_ratio_ids).view(-1, self.max_num_tiles, 1, x.shape[-1])
        return x + self.gate.tanh() * table


class TilePositionEmbedding(nn.Module):
    """x (N, T, L, D) + (1 - tanh(gate)) * position (L, D) + tanh(gate) * tile_embedding[id] (N, T, L, D)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.max_num_tiles, self.num_tokens = cfg.max_num_tiles, cfg.num_tokens
        self.tile_embedding = nn.Embedding(
            len(cfg.supported_aspect_ratios) + 1, cfg.max_num_tiles * cfg.num_tokens * cfg.dim
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, position: Tensor, aspect_ratio_ids: Tensor) -> Tensor:
        gate = self.gate.tanh()
        shape = (-1, self.max_num_tiles, self.num_tokens, x.shape[-1])
        tiles = self.tile_embedding(aspect_ratio_ids).view(shape)
        return x + (1 - gate) * position + gate * tiles


def tile_attention_mask(
    aspect_ratio_mask: Tensor, num_tokens: int, length: int, dtype: torch.dtype
) -> Tensor:
    """Additive mask (N, 1, T * length, T * length) over the padded tokens of all tiles of each image.

    A token is padding when its tile is (``aspect_ratio_mask`` 0) or it lies past ``num_tokens`` in its
    tile. As in Mllama (Meta's reference, transformers), only padding-to-padding pairs are masked: real
    tokens attend to padding tokens and tiles too. The masked value is the dtype's minimum, not -inf, so an
    all-padding image (no image in that slot) attends uniformly instead of giving NaN.
    """
    n, t = aspect_ratio_mask.shape
    is_pad = ~aspect_ratio_mask.bool()[:, :, None].expand(n, t, length).clone()
    is_pad[:, :, num_tokens:] = True
    is_pad = is_pad.flatten(1)
    both = is_pad[:, :, None] & is_pad[:, None, :]
    mask = torch.zeros(both.shape, dtype=dtype, device=both.device)
    return mask.masked_fill(both, torch.finfo(dtype).min)[:, None]


def tile_mask_from_ids(aspect_ratio_ids: Tensor, cfg: VisionConfig) -> Tensor:
    """(N, T) aspect_ratio_mask for aspect_ratio_ids (N,): the first rows * columns tiles are real."""
    device = aspect_ratio_ids.device
    counts = torch.tensor([0] + [h * w for h, w in cfg.supported_aspect_ratios], device=device)
    if aspect_ratio_ids.min() < 0 or aspect_ratio_ids.max() >= len(counts):
        ids = aspect_ratio_ids.tolist()
        raise ValueError(f"aspect_ratio_ids must lie in 0..{len(counts) - 1}, got {ids}")
    return torch.arange(cfg.max_num_tiles, device=device) < counts[aspect_ratio_ids][:, None]
