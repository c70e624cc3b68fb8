"""Video: frame sampling and the Perceiver Resampler (Flamingo) that turns frame features into latents.

A video of any length is resampled uniformly in time to ``num_frames`` frames (64 by default, as Llama 3
does), the frames go through the image encoder and projection head, and each group of ``group_size``
consecutive frames (32) is merged by learned latents cross-attending to all of the group's tokens. The
decoder therefore always sees ``num_frames / group_size * num_latents`` video tokens, whatever the frame
count. The video cross-attention layers that read them live in fusion.py; they have no positions, so each
group's latents start from a learned embedding of the group's place in the clip: without it the decoder
could not tell a clip from the same clip with its groups in another order (a colour change from red to
blue read the same as one from blue to red).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmforge.training.model.config import VideoConfig


def sample_frame_indices(num_frames: int, num_samples: int) -> Tensor:
    """Indices of ``num_samples`` frames spread uniformly over ``num_frames`` (short clips repeat frames)."""
    centres = (torch.arange(num_samples) + 0.5) * num_frames / num_samples
    return centres.floor().long().clamp(max=num_frames - 1)


class PerceiverAttention(nn.Module):
    """Latents attend to the media tokens and to themselves (keys/values from both, as in Flamingo)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        b, n, dim = latents.shape
        latents = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), latents], dim=1)
        q = self.q_proj(latents).view(b, n, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(context).view(b, context.shape[1], self.num_heads, -1).transpose(1, 2)
        v = self.v_proj(context).view(b, context.shape[1], self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, dim))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, num_heads)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mlp_ratio * dim, bias=False),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim, bias=False),
        )

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.mlp(latents)


class PerceiverResampler(nn.Module):
    """Frame features (B, num_frames, T, D) -> video tokens (B, num_groups * num_latents, D)."""

    def __init__(self, cfg: VideoConfig, dim: int) -> None:
        super().__init__()
        if cfg.num_frames % cfg.group_size:
            raise ValueError(f"num_frames {cfg.num_frames} is not a multiple of group_size {cfg.group_size}")
        self.cfg = cfg
        self.latents = nn.Parameter(0.02 * torch.randn(cfg.num_latents, dim))
        # where a frame sits inside its group, so the latents can tell time apart. At the frame tokens'
        # own scale (the projection head's output, std ~1.5 in the tiny recipe): started at 0.02 it was ~2 %
        # of each token, stayed there in training, and the order inside a group was barely seen.
        self.frame_embedding = nn.Parameter(torch.randn(cfg.group_size, dim))
        # where a group sits in the clip (see the module docstring)
        self.group_embedding = nn.Parameter(0.02 * torch.randn(cfg.num_groups, dim))
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, frames: Tensor) -> Tensor:
        b, num_frames, tokens, dim = frames.shape
        if num_frames != self.cfg.num_frames:
            raise ValueError(
                f"expected {self.cfg.num_frames} frames (see sample_frame_indices), got {num_frames}"
            )
        groups = num_frames // self.cfg.group_size
        media = frames.reshape(b * groups, self.cfg.group_size, tokens, dim) + self.frame_embedding[:, None]
        media = media.flatten(1, 2)
        latents = (self.latents + self.group_embedding[:, None]).repeat(b, 1, 1)  # row b * groups + g
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents).reshape(b, groups * self.cfg.num_latents, dim)
