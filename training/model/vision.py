"""ViT image encoder and the projection head that carries its features into the decoder.

Encoder: conv patch embedding, class token, learned position embedding (bilinearly interpolated when the
input resolution differs from the stored one), pre-norm blocks. It returns the final output and the INPUTS
of the configured intermediate blocks (index i: what block i reads, i.e. the output of block i - 1; 0 is the
embedding after ln_pre). That is the convention of Meta's reference, torchtune (``out_indices``), vLLM and
transformers 4.x, so Llama-3.2-Vision weights ([3, 7, 15, 23, 30]) see the features they were trained on.

Projection head (the Llama 3.2 Vision arrangement): layer norm, a few gated self-attention layers on the
final output, concatenation with the intermediate outputs along the feature axis (5 intermediate + final
of a 1280-wide ViT-H give 7680), and a linear map to the decoder width.

Tiles (``VisionConfig.tile_grid`` > 1): an image of g * image_size px goes through the encoder as a
thumbnail plus g * g tiles, each at the resolution the encoder was trained at (``split_views``); the
projection head adds a learned, zero-initialised embedding per view. Llama 3.2 Vision also reads high
resolutions as tiles (without a thumbnail) instead of stretching its position embedding.

Mllama's aspect-ratio tiles (``VisionConfig.max_num_tiles`` > 1): images (N, T, C, S, S) with their
``aspect_ratio_ids`` (N,) and ``aspect_ratio_mask`` (N, T). Each tile gets the pre-tile embedding of its
aspect ratio and tile index, the class token and the gated tile position embedding (model/tiles.py); the
tiles of an image are then one sequence (T * padded tokens) through all blocks, the encoder's and the
projection head's (which first adds the post-tile embedding), under ``tile_attention_mask``. The output
is laid out per image, per tile, per token, as transformers' ``MllamaVisionModel``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmforge.training.model.config import CLIP_MEAN, CLIP_STD, ProjectionConfig, VisionConfig
from vlmforge.training.model.tiles import AspectRatioEmbedding, TilePositionEmbedding, tile_attention_mask


class VisionOutput(NamedTuple):
    last_hidden_state: Tensor  # (N, L, D); L counts padding tokens when cfg.pad_to_multiple > 1
    hidden_states: list[Tensor]  # inputs of the blocks cfg.intermediate_layers, each (N, L, D)
    num_tokens: int  # real tokens (class token + patches); positions num_tokens.. are padding
    # Mllama tiles only: L is max_num_tiles * the padded tokens of a tile
    aspect_ratio_ids: Tensor | None = None  # (N,)
    tile_mask: Tensor | None = None  # (N, 1, L, L) additive, tiles.tile_attention_mask


def activation(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unsupported vision activation {name!r}")


def padding_mask(num_tokens: int, length: int, device: torch.device) -> Tensor | None:
    """Mllama's attention mask for a padded sequence: True where attention is allowed.

    Only padding-to-padding pairs are masked, so real tokens do attend to the padding tokens (zeros at the
    input, then updated by every block). That is how Meta's reference and HF Mllama compute it; matching
    it is what lets exported weights give the same outputs in transformers and vLLM.
    """
    if length == num_tokens:
        return None
    is_pad = torch.arange(length, device=device) >= num_tokens
    return ~(is_pad[:, None] & is_pad[None, :])


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.attn_bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        n, length, dim = x.shape
        q, k, v = (
            proj(x).view(n, length, self.num_heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(n, length, dim))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.act = cfg.act
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block; with ``gate_init`` both residual branches are scaled by tanh(gate)."""

    def __init__(self, cfg: VisionConfig, gate_init: float | None = None) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = VisionMLP(cfg)
        self.gated = gate_init is not None
        if self.gated:
            self.gate_attn = nn.Parameter(torch.full((1,), float(gate_init)))
            self.gate_ffn = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.self_attn(self.input_layernorm(x), mask)
        x = x + (self.gate_attn.tanh() * h if self.gated else h)
        h = self.mlp(self.post_attention_layernorm(x))
        return x + (self.gate_ffn.tanh() * h if self.gated else h)


def interpolate_position_embedding(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize a (1 + g*g, D) position table to a new patch grid, bilinearly; the class row is kept. A (g*g, D)
    table (no class token, SigLIP) is resized as a whole."""
    has_cls = math.isqrt(pos.shape[0]) ** 2 != pos.shape[0]
    cls, patches = pos[: int(has_cls)], pos[int(has_cls) :]
    g = math.isqrt(patches.shape[0])
    patches = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=grid, mode="bilinear", align_corners=False)
    patches = patches.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls, patches])


def split_views(images: Tensor, grid: int) -> Tensor:
    """(N, C, g*S, g*S) -> (N * (1 + g*g), C, S, S): per image a thumbnail (box-averaged to S), then its
    g*g tiles in row-major order."""
    n, c, height, width = images.shape
    if height != width or height % grid:
        raise ValueError(f"tiled images must be square with a side divisible by {grid}, got {height}x{width}")
    s = height // grid
    thumbnail = F.interpolate(images, size=(s, s), mode="area")
    tiles = images.reshape(n, c, grid, s, grid, s).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, s, s)
    return torch.cat([thumbnail[:, None], tiles], dim=1).flatten(0, 1)


class VisionEncoder(nn.Module):
    """ViT: images (N, C, H, W) -> final output and intermediate-layer outputs."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if any(not 0 <= i < cfg.num_layers for i in cfg.intermediate_layers):
            raise ValueError(f"intermediate_layers {cfg.intermediate_layers} outside 0..{cfg.num_layers - 1}")
        self.cfg = cfg
        scale = cfg.dim**-0.5
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias
        )
        if cfg.class_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(cfg.dim))
        self.position_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, cfg.dim))
        self.ln_pre = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_layers))
        if cfg.max_num_tiles > 1:
            self.pre_tile_embedding = AspectRatioEmbedding(cfg)
            self.tile_position_embedding = TilePositionEmbedding(cfg)

    def position_embedding_for(self, grid: tuple[int, int]) -> Tensor:
        if grid == (self.cfg.grid_size, self.cfg.grid_size):
            return self.position_embedding
        return interpolate_position_embedding(self.position_embedding, grid)

    @torch.no_grad()
    def resize_position_embedding(self, image_size: int) -> None:
        """Store the position embedding at a new resolution (e.g. between training stages)."""
        if self.cfg.max_num_tiles > 1:
            raise ValueError("vision.max_num_tiles > 1: the tile position tables are sized for image_size")
        grid = image_size // self.cfg.patch_size
        pos = interpolate_position_embedding(self.position_embedding.detach(), (grid, grid))
        self.position_embedding = nn.Parameter(pos, requires_grad=self.position_embedding.requires_grad)
        self.cfg = dataclasses.replace(self.cfg, image_size=image_size)

    def normalise(self, images: Tensor) -> Tensor:
        """CLIP-normalised images -> the encoder's own normalisation, in the weights' dtype."""
        cfg = self.cfg
        if cfg.pixel_mean != CLIP_MEAN or cfg.pixel_std != CLIP_STD:
            mean, std, clip_mean, clip_std = (
                torch.tensor(v, device=images.device).view(-1, 1, 1)
                for v in (cfg.pixel_mean, cfg.pixel_std, CLIP_MEAN, CLIP_STD)
            )
            images = (images * clip_std + clip_mean - mean) / std
        return images.to(self.patch_embedding.weight.dtype)

    def run_layers(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        inputs = []
        for layer in self.layers:
            inputs.append(x)  # Meta's convention: the features of block i are what it reads
            x = layer(x, mask)
        return x, [inputs[i] for i in self.cfg.intermediate_layers]

    def forward(
        self, images: Tensor, aspect_ratio_ids: Tensor | None = None, aspect_ratio_mask: Tensor | None = None
    ) -> VisionOutput:
        """images (N, C, H, W); with Mllama tiles (N, T, C, S, S) and ids (N,), mask (N, T)."""
        if self.cfg.max_num_tiles > 1:
            if aspect_ratio_ids is None or aspect_ratio_mask is None:
                raise ValueError("vision.max_num_tiles > 1: the encoder needs aspect_ratio_ids and _mask")
            return self.forward_tiles(images, aspect_ratio_ids, aspect_ratio_mask)
        x = self.patch_embedding(self.normalise(images))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        if self.cfg.class_token:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self.position_embedding_for(grid)
        x = self.ln_pre(x)

        num_tokens = x.shape[1]
        x = F.pad(x, (0, 0, 0, -num_tokens % self.cfg.pad_to_multiple))
        mask = padding_mask(num_tokens, x.shape[1], x.device)
        x, features = self.run_layers(x, mask)
        return VisionOutput(x, features, num_tokens)

    def forward_tiles(
        self, images: Tensor, aspect_ratio_ids: Tensor, aspect_ratio_mask: Tensor
    ) -> VisionOutput:
        cfg = self.cfg
        expected = (cfg.max_num_tiles, cfg.num_channels, cfg.image_size, cfg.image_size)
        if images.dim() != 5 or tuple(images.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"tiled images must be (N, {shape}), got {tuple(images.shape)}")
        n, t = images.shape[:2]
        if aspect_ratio_ids.shape != (n,) or aspect_ratio_mask.shape != (n, t):
            raise ValueError(
                f"aspect_ratio_ids must be ({n},) and aspect_ratio_mask ({n}, {t}), got "
                f"{tuple(aspect_ratio_ids.shape)} and {tuple(aspect_ratio_mask.shape)}"
            )
        x = self.patch_embedding(self.normalise(images.flatten(0, 1)))
        x = self.pre_tile_embedding(x.flatten(2).transpose(1, 2).unflatten(0, (n, t)), aspect_ratio_ids)
        x = torch.cat([self.class_embedding.expand(n, t, 1, -1), x], dim=2)
        x = self.ln_pre(self.tile_position_embedding(x, self.position_embedding, aspect_ratio_ids))

        num_tokens = x.shape[2]
        x = F.pad(x, (0, 0, 0, -num_tokens % cfg.pad_to_multiple))
        mask = tile_attention_mask(aspect_ratio_mask, num_tokens, x.shape[2], x.dtype)
        x, features = self.run_layers(x.flatten(1, 2), mask)
        return VisionOutput(x, features, num_tokens, aspect_ratio_ids, mask)


class VisionProjection(nn.Module):
    """Projection head: encoder output of N images' views (or Mllama tiles) -> (N, views * num_tokens,
    decoder_dim) (or (N, max_num_tiles * num_tokens, decoder_dim))."""

    def __init__(self, vision: VisionConfig, cfg: ProjectionConfig, out_dim: int) -> None:
        super().__init__()
        self.ln_post = nn.LayerNorm(vision.dim, eps=vision.norm_eps)
        self.layers = nn.ModuleList(
            VisionBlock(vision, gate_init=cfg.gate_init) for _ in range(cfg.num_layers)
        )
        self.proj = nn.Linear(vision.dim * (1 + len(vision.intermediate_layers)), out_dim)
        self.num_views = vision.num_views
        if self.num_views > 1:  # zero at first: the thumbnail's tokens are the untiled model's
            self.view_embedding = nn.Parameter(torch.zeros(self.num_views, 1, out_dim))
        self.max_num_tiles = vision.max_num_tiles
        if self.max_num_tiles > 1:
            self.post_tile_embedding = AspectRatioEmbedding(vision)

    def forward(self, out: VisionOutput) -> Tensor:
        x = self.ln_post(out.last_hidden_state)
        if out.aspect_ratio_ids is None:
            mask = padding_mask(out.num_tokens, x.shape[1], x.device)
        else:
            x = self.post_tile_embedding(x.unflatten(1, (self.max_num_tiles, -1)), out.aspect_ratio_ids)
            x, mask = x.flatten(1, 2), out.tile_mask
        for layer in self.layers:
            x = layer(x, mask)
        features = torch.cat([x, *out.hidden_states], dim=-1)
        if out.aspect_ratio_ids is None:
            features = features[:, : out.num_tokens]
        else:  # drop each tile's padding tokens
            features = features.unflatten(1, (self.max_num_tiles, -1))[:, :, : out.num_tokens].flatten(1, 2)
        tokens = self.proj(features)
        if self.num_views == 1:
            return tokens
        tokens = tokens.unflatten(0, (-1, self.num_views)) + self.view_embedding
        return tokens.flatten(1, 2)
