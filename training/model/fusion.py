"""Fusion: gated cross-attention adapters between the blocks of a frozen decoder, and the fused model.

A ``CrossAttentionBlock`` runs before decoder block i when (i + 1) % every == 0 (blocks 3, 7, 11, ... by
default, Llama 3.2 Vision's placement). Queries come from the text stream, keys and values from the image
tokens; q and k are RMS-normalised per head; the attention and MLP branches are added through tanh gates
that start at zero, so the untrained fused model computes exactly the text model.

``encoder_mask`` (B, S, num_images) says which images each text token sees. A token that sees none, in
particular every token of a row that has no image, attends to all image tokens (so no NaN) and then has
both branch outputs multiplied by zero: its hidden state passes the layer unchanged. Rows without images
get a placeholder image and an all-false mask, so the encoder and every cross-attention layer run the
same ops on every row and every rank (ZeRO-3 hangs when ranks skip layers, DeepSpeed issue 7170).

Mllama's aspect-ratio tiles (``VisionConfig.max_num_tiles`` > 1): each image is (max_num_tiles, C, S, S)
with an ``aspect_ratio_id`` and ``aspect_ratio_mask``; its tokens are those of all its tiles (per tile, per
token, as Mllama), and a text token that sees the image sees the tokens of its real tiles only (Mllama's
cross-attention mask, where tiles past an image's count are 0).

Packed rows (``data.packing``) hold several samples, each with its own image token and image:
``position_ids`` restart at every sample, ``segment_ids`` make self-attention block-causal (run sample by
sample, ``Segments``), and each image is seen only by the tokens of its own sample (``packed_media_mask``:
Mllama's rule within the sample; the cross-attention also runs sample by sample, in the same length
buckets); the image slots that no token sees (a row with fewer images than the widest row) are not encoded.

The loss is taken in chunks of positions (``chunked_lm_loss``): the output head and the cross entropy run
on the positions with a target only, an eighth of them at a time, recomputed in the backward pass, so the
fp32 logits of a long batch over a large vocabulary never exist at once.

``FusionModel`` keeps encoder, projection head, decoder, fusion layers (and video adapters) as separate
modules with a ``trainable`` switch each; by default only the decoder is frozen. New special tokens (the
image token first) are learned in a small table of their own next to the frozen embedding table.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlmforge.training.model.config import IGNORE_INDEX, DecoderConfig, ModelConfig, TrainableConfig
from vlmforge.training.model.decoder import (
    MLP,
    Decoder,
    KVCache,
    RMSNorm,
    Segments,
    generate,
    init_weights,
)
from vlmforge.training.model.perceiver import PerceiverResampler, sample_frame_indices
from vlmforge.training.model.tiles import tile_mask_from_ids
from vlmforge.training.model.vision import VisionEncoder, VisionProjection, split_views


def media_attention_mask(input_ids: Tensor, media_token_id: int, num_media: int) -> Tensor:
    """(B, S, num_media) bool: which media (images, or a video) each token sees, from the media tokens.

    The Mllama processor's rule, so training and serving agree: the n-th media token's media is seen from
    that token up to the next media token; the media of a run of consecutive media tokens are all seen up
    to the next media token after the run. Tokens before the first media token see nothing, nor does
    anyone see media without a token in the row (padding).
    """
    b, s = input_ids.shape
    mask = torch.zeros(b, s, num_media, dtype=torch.bool, device=input_ids.device)
    for row in range(b):
        starts = (input_ids[row] == media_token_id).nonzero().flatten().tolist()
        ends = [*starts[1:], s][: len(starts)]
        for n in reversed(range(len(starts) - 1)):
            if starts[n] + 1 == starts[n + 1]:
                ends[n] = ends[n + 1]
        for n, (start, end) in enumerate(zip(starts[:num_media], ends[:num_media], strict=True)):
            mask[row, start:end, n] = True
    return mask


def packed_media_mask(input_ids: Tensor, segment_ids: Tensor, media_token_id: int, num_media: int) -> Tensor:
    """(B, S, num_media) bool for packed rows: ``media_attention_mask`` (the n-th media token's media, from
    that token on) limited to the tokens of the segment (sample) that holds the media token."""
    mask = media_attention_mask(input_ids, media_token_id, num_media)
    b, s = input_ids.shape
    owner = torch.full((b, num_media), -2, dtype=segment_ids.dtype, device=input_ids.device)
    for row in range(b):
        at = (input_ids[row] == media_token_id).nonzero().flatten()[:num_media]
        owner[row, : len(at)] = segment_ids[row, at]
    return mask & (segment_ids[:, :, None] == owner[:, None, :])


def token_losses(labels: Tensor, valid: Tensor, per_target: Tensor) -> Tensor:
    """(B, S) float32 aligned with ``labels``: at s the (detached) loss of predicting ``labels[:, s]``, NaN
    where no loss is taken; ``valid`` (B, S - 1) marks the targets of ``per_target``, in row-major order."""
    out = torch.full(labels.shape, float("nan"), dtype=torch.float32, device=labels.device)
    out[:, 1:][valid] = per_target.detach().float()
    return out


def chunked_lm_loss(
    hidden: Tensor, head: nn.Module, labels: Tensor, vocab_size: int, chunks: int
) -> tuple[Tensor, Tensor]:
    """Mean next-token cross entropy of ``head(hidden)`` against ``labels`` shifted by one (-100 and ids
    >= vocab_size take no loss), computed on the positions that take a loss only, in ``chunks`` pieces;
    and the per-token losses it is the mean of (``token_losses``: the trainer's per-source figures).

    Each piece is recomputed in the backward pass (activation checkpointing), so at most one piece's fp32
    logits are alive at once. The number of pieces is fixed, not derived from the batch, so every rank
    calls the head equally often (under ZeRO-3 each call gathers its weight; pieces may be empty).
    """
    targets = labels[:, 1:]
    valid = (targets != IGNORE_INDEX) & (targets < vocab_size)
    h, t = hidden[:, :-1][valid], targets[valid]

    def piece(h_piece: Tensor, t_piece: Tensor) -> Tensor:
        return F.cross_entropy(head(h_piece).float(), t_piece, reduction="none")

    if chunks <= 1:
        per = piece(h, t)
    else:
        recompute = torch.is_grad_enabled() and h.requires_grad
        per = torch.cat([
            checkpoint(piece, h_piece, t_piece, use_reentrant=False) if recompute else piece(h_piece, t_piece)
            for h_piece, t_piece in zip(h.tensor_split(chunks), t.tensor_split(chunks), strict=True)
        ])
    # nan without targets, as F.cross_entropy's mean
    return per.sum() / t.numel(), token_losses(labels, valid, per)


class CrossAttention(nn.Module):
    """Text queries attend to media tokens; grouped-query heads, RMSNorm on q and k, no positions."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(
        self,
        x: Tensor,
        media: Tensor,
        mask: Tensor,
        cache: KVCache | None = None,
        bias: Tensor | None = None,
        segments: Segments | None = None,
    ) -> Tensor:
        """x (B, S, D), media (B, T, D), mask (B, S, T) bool; the cache keeps k and v of the media.

        ``bias`` (T,) is added to the attention logits of every query. With ``segments`` (packed rows)
        each sample's tokens attend to its own image's tokens only (``Segments.image``), bucket by bucket.
        """
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.num_heads, self.head_dim))
        if segments is not None:
            return self._per_sample(q, media, segments, bias)
        q = q.transpose(1, 2)
        if cache is not None and cache.length:
            k, v = cache.k, cache.v
        else:
            t = media.shape[1]
            k = self.k_norm(self.k_proj(media).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
            v = self.v_proj(media).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
            if cache is not None:
                cache.update(k, v)
        attn_mask = mask[:, None]
        if bias is not None:
            blocked = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
            attn_mask = blocked + bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    def _per_sample(self, q: Tensor, media: Tensor, seg: Segments, bias: Tensor | None) -> Tensor:
        """q (B, S, heads, head_dim) -> (B, S, heads * head_dim): each sample's tokens attend to all tokens
        of its own image (a token that sees none, or a sample without an image, attends to those of image
        slot 0 and the block zeroes its output), one attention call per bucket of samples."""
        t = media.shape[1] // seg.num_images
        images = media.reshape(-1, t, media.shape[-1]).index_select(0, seg.image.clamp(min=0))
        k = self.k_norm(self.k_proj(images).view(*images.shape[:2], self.num_kv_heads, self.head_dim))
        v = self.v_proj(images).view(*images.shape[:2], self.num_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (num, kv heads, T, head_dim), in bucket order
        attn_mask = None if bias is None else bias[:t].to(q.dtype).view(1, 1, 1, t)
        outs, at = [], 0
        for qb in seg.gather(q):
            n = qb.shape[0]
            out = F.scaled_dot_product_attention(
                qb.transpose(1, 2), k[at : at + n], v[at : at + n], attn_mask=attn_mask, enable_gqa=True
            )
            outs.append(out.transpose(1, 2))
            at += n
        return self.o_proj(seg.scatter(outs).flatten(2))


class CrossAttentionBlock(nn.Module):
    """Gated cross-attention and gated SwiGLU MLP; both gates start at zero.

    With ``tile_bias_init`` the block learns one logit bias for the tokens of image tiles (FusionConfig).
    """

    def __init__(self, cfg: DecoderConfig, tile_bias_init: float | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_gate = nn.Parameter(torch.zeros(1))
        if tile_bias_init is not None:
            self.tile_bias = nn.Parameter(torch.full((1,), tile_bias_init))

    def forward(
        self,
        x: Tensor,
        media: Tensor,
        mask: Tensor,
        cache: KVCache | None = None,
        is_tile: Tensor | None = None,
        segments: Segments | None = None,
    ) -> Tensor:
        """``is_tile`` (T,) bool marks the media tokens that come from image tiles (not the thumbnail);
        ``segments``: packed rows (``CrossAttention``)."""
        bias = None if is_tile is None else is_tile.to(x.dtype) * self.tile_bias
        if segments is not None:  # packed rows: the mask is per sample (Segments), computed once a forward
            keep = segments.sees_image[..., None].to(x.dtype)
            h = self.cross_attn(self.input_layernorm(x), media, mask, cache, bias, segments) * keep
        else:
            sees_media = mask.any(dim=-1, keepdim=True)
            keep = sees_media.to(x.dtype)
            h = self.cross_attn(self.input_layernorm(x), media, mask | ~sees_media, cache, bias) * keep
        x = x + self.attn_gate.tanh() * h
        h = self.mlp(self.post_attention_layernorm(x)) * keep
        return x + self.mlp_gate.tanh() * h


class FusionLayers(nn.Module):
    """The image adapters: cross-attention blocks and the embedding rows of the new special tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.fusion.num_new_tokens, cfg.decoder.dim)
        tile_bias = cfg.fusion.tile_bias_init if cfg.vision.tile_grid > 1 else None
        self.layers = nn.ModuleList(
            CrossAttentionBlock(cfg.decoder, tile_bias) for _ in range(cfg.num_fusion_layers)
        )


class VideoFusion(nn.Module):
    """The video adapters: Perceiver Resampler and video cross-attention blocks of their own."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.video is not None
        self.resampler = PerceiverResampler(cfg.video, cfg.decoder.dim)
        num_layers = cfg.num_fusion_layers // cfg.video.every
        self.layers = nn.ModuleList(CrossAttentionBlock(cfg.decoder) for _ in range(num_layers))


class Media(NamedTuple):
    """Encoded media and token-level masks, ready for the cross-attention layers."""

    image_tokens: Tensor  # (B, num_images * T, D)
    image_mask: Tensor  # (B, S, num_images * T) bool
    image_is_tile: Tensor | None = None  # (num_images * T,) bool: tokens of tiles (not thumbnails)
    video_tokens: Tensor | None = None  # (B, num_groups * num_latents, D)
    video_mask: Tensor | None = None  # (B, S, num_groups * num_latents) bool
    segments: Segments | None = None  # packed rows: the samples and their images


class ModelOutput(NamedTuple):
    logits: Tensor | None  # (B, S, vocab_size); None when labels are given (the loss is chunked)
    loss: Tensor | None  # mean next-token cross entropy over labels != -100, when labels are given
    token_loss: Tensor | None = None  # (B, S) the loss at each label, NaN where none (``token_losses``)


@dataclass
class FusionCaches:
    decoder: list[KVCache]
    image: list[KVCache]
    video: list[KVCache]


class FusionModel(nn.Module):
    """Image encoder + projection head + Llama decoder + gated cross-attention adapters (+ video)."""

    # Pieces of the output head and cross entropy in the loss (chunked_lm_loss): 1/8 of the logits at once.
    loss_chunks: int = 8

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # dtype/device of placeholder media. A buffer, not a weight: reading a ZeRO-3 partitioned weight
        # on one rank only starts an all-gather the other ranks never join.
        self.register_buffer("media_probe", torch.zeros(()), persistent=False)
        self.config = cfg = copy.deepcopy(cfg)
        if cfg.video is not None and cfg.vision.max_num_tiles > 1:
            raise ValueError("vision.max_num_tiles > 1 (Mllama tiles) is not supported with a video path")
        self.encoder = VisionEncoder(cfg.vision)
        self.projection = VisionProjection(cfg.vision, cfg.projection, cfg.decoder.dim)
        self.decoder = Decoder(cfg.decoder)
        self.fusion = FusionLayers(cfg)
        self.video = VideoFusion(cfg) if cfg.video is not None else None
        for module in (self.encoder, self.projection, self.fusion, self.video):
            if module is not None:
                module.apply(init_weights)
        self.set_trainable(cfg.trainable)

    # ------------------------------------------------------------------------------------------ switches

    def set_trainable(self, trainable: TrainableConfig) -> None:
        """Freeze or unfreeze whole components (``requires_grad`` only; nothing is rebuilt)."""
        for name in ("encoder", "projection", "decoder", "fusion", "video"):
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(getattr(trainable, name))
        self.config = dataclasses.replace(self.config, trainable=trainable)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def resize_images(self, image_size: int) -> None:
        """Store the encoder's position embedding at a new resolution (stage 1 -> stage 2)."""
        self.encoder.resize_position_embedding(image_size)
        self.config = dataclasses.replace(self.config, vision=self.encoder.cfg)

    # ---------------------------------------------------------------------------------------- encoding

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings: ids below vocab_size from the decoder's table, the rest from the new table."""
        vocab = self.config.decoder.vocab_size
        is_new = input_ids >= vocab
        old = self.decoder.embed_tokens(input_ids.masked_fill(is_new, 0))
        new = self.fusion.token_embedding((input_ids - vocab).clamp(min=0))
        return torch.where(is_new[..., None], new, old)

    def encode_images(
        self, images: Tensor, aspect_ratio_ids: Tensor | None = None, aspect_ratio_mask: Tensor | None = None
    ) -> Tensor:
        """(N, C, H, W) -> (N, T, decoder_dim) image tokens (with tiles: the thumbnail's, then the tiles').

        Mllama tiles: (N, max_num_tiles, C, S, S), ids (N,), mask (N, max_num_tiles) -> per tile, per token.
        """
        if self.config.vision.tile_grid > 1:
            images = split_views(images, self.config.vision.tile_grid)
        return self.projection(self.encoder(images, aspect_ratio_ids, aspect_ratio_mask))

    def encode_video(self, videos: Tensor) -> Tensor:
        """(B, F, C, H, W) with any F -> (B, num_groups * num_latents, decoder_dim) video tokens."""
        assert self.video is not None and self.config.video is not None
        b, num_frames = videos.shape[:2]
        target = self.config.video.num_frames
        index = sample_frame_indices(num_frames, target).to(videos.device)
        if num_frames > target:  # drop unused frames before the encoder; short clips are encoded once
            videos, index = videos[:, index], torch.arange(target, device=videos.device)
        features = self.encode_images(videos.flatten(0, 1))
        features = features.reshape(b, videos.shape[1], *features.shape[1:])[:, index]
        return self.video.resampler(features)

    def placeholder_images(self, batch: int, num: int = 1) -> Tensor:
        v = self.encoder.cfg
        p = self.media_probe
        tiles = (v.max_num_tiles,) if v.max_num_tiles > 1 else ()
        return torch.zeros(
            batch, num, *tiles, v.num_channels, v.input_size, v.input_size, dtype=p.dtype, device=p.device
        )

    def tile_inputs(
        self, images: Tensor, aspect_ratio_ids: Tensor | None, aspect_ratio_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mllama tiles: images (B, N, T, C, S, S), ids (B, N) and mask (B, N, T) from the accepted forms
        (one image a row: (B, T, C, S, S), (B,), (B, T); no mask: from the ids)."""
        if aspect_ratio_ids is None:
            raise ValueError("vision.max_num_tiles > 1: images need their aspect_ratio_ids")
        if images.dim() == 5:
            images, aspect_ratio_ids = images[:, None], aspect_ratio_ids.reshape(-1, 1)
            if aspect_ratio_mask is not None:
                aspect_ratio_mask = aspect_ratio_mask[:, None]
        if images.dim() != 6 or aspect_ratio_ids.shape != images.shape[:2]:
            raise ValueError(
                f"tiled images must be (B, N, T, C, S, S) with aspect_ratio_ids (B, N), got "
                f"{tuple(images.shape)} and {tuple(aspect_ratio_ids.shape)}"
            )
        if aspect_ratio_mask is None:
            aspect_ratio_mask = tile_mask_from_ids(aspect_ratio_ids.flatten(), self.config.vision)
            aspect_ratio_mask = aspect_ratio_mask.view(*images.shape[:3])
        return images, aspect_ratio_ids, aspect_ratio_mask

    def encode_media(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        videos: Tensor | None = None,
        video_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        aspect_ratio_ids: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
    ) -> Media:
        """Run the encoder (and video path) and expand the masks to media-token level.

        Without images a placeholder with an all-false mask goes through, so the same layers run always.
        With ``segment_ids`` (packed rows) the default mask is ``packed_media_mask``, and only the image
        slots some token sees are encoded (the others get zero tokens, which nothing attends to).
        With Mllama tiles each token's mask is also limited to the real tiles (``aspect_ratio_mask``).
        """
        b, s = input_ids.shape
        tiled = self.config.vision.max_num_tiles > 1
        if images is None:
            if encoder_mask is not None or aspect_ratio_ids is not None or aspect_ratio_mask is not None:
                raise ValueError("encoder_mask or aspect_ratio_ids/_mask given without images")
            images = self.placeholder_images(b)
            encoder_mask = torch.zeros(b, s, 1, dtype=torch.bool, device=input_ids.device)
            if tiled:  # id 0: no image, every tile padding
                aspect_ratio_ids = torch.zeros(b, 1, dtype=torch.long, device=input_ids.device)
        if tiled:
            if segment_ids is not None:
                raise ValueError("packed rows (segment_ids) are not supported with vision.max_num_tiles > 1")
            images, aspect_ratio_ids, aspect_ratio_mask = self.tile_inputs(
                images, aspect_ratio_ids, aspect_ratio_mask
            )
        elif aspect_ratio_ids is not None or aspect_ratio_mask is not None:
            raise ValueError("aspect_ratio_ids/_mask given to a single-tile model (vision.max_num_tiles 1)")
        if images.dim() == 4:
            images = images[:, None]
        num_images = images.shape[1]
        if encoder_mask is None and segment_ids is not None:
            if self.video is not None:
                raise ValueError("packed rows (segment_ids) are not supported with a video path")
            encoder_mask = packed_media_mask(input_ids, segment_ids, self.config.image_token_id, num_images)
        elif encoder_mask is None:
            encoder_mask = media_attention_mask(input_ids, self.config.image_token_id, num_images)
        elif encoder_mask.dim() == 2:
            encoder_mask = encoder_mask[..., None]
        if tiled:
            tokens = self.encode_images(
                images.flatten(0, 1), aspect_ratio_ids.flatten(), aspect_ratio_mask.flatten(0, 1)
            )
        elif segment_ids is None:
            tokens = self.encode_images(images.flatten(0, 1))
        else:
            seen = encoder_mask.any(dim=1).flatten()
            seen[0] |= ~seen.any()  # at least one image, so the encoder runs on every rank (ZeRO-3)
            where = seen.nonzero().flatten()
            encoded = self.encode_images(images.flatten(0, 1)[where])
            tokens = encoded.new_zeros((b * num_images, *encoded.shape[1:])).index_copy(0, where, encoded)
        per_image = tokens.shape[1]
        image_tokens = tokens.reshape(b, num_images * per_image, -1)
        image_mask = encoder_mask.bool().repeat_interleave(per_image, dim=-1)
        if tiled:  # tiles past an image's count are not seen (Mllama's cross-attention mask)
            per_tile = per_image // aspect_ratio_mask.shape[-1]
            real = aspect_ratio_mask.bool().repeat_interleave(per_tile, dim=-1)
            image_mask = image_mask & real.reshape(b, 1, -1)
        is_tile = None
        if self.config.vision.num_views > 1:
            per_view = per_image // self.config.vision.num_views
            is_tile = (torch.arange(per_image, device=tokens.device) >= per_view).repeat(num_images)

        if self.video is None:
            if videos is not None:
                raise ValueError("this model has no video path (config.video is None)")
            segments = None if segment_ids is None else Segments.of(segment_ids, encoder_mask.bool())
            return Media(image_tokens, image_mask, is_tile, segments=segments)
        if videos is None:
            if video_mask is not None:
                raise ValueError("video_mask given without videos")
            videos = self.placeholder_images(b)
            video_mask = torch.zeros(b, s, dtype=torch.bool, device=input_ids.device)
        if video_mask is None:
            video_mask = media_attention_mask(input_ids, self.config.video_token_id, 1)
        video_tokens = self.encode_video(videos)
        video_mask = video_mask.bool().reshape(b, s, 1).expand(b, s, video_tokens.shape[1])
        return Media(image_tokens, image_mask, is_tile, video_tokens, video_mask)

    # ---------------------------------------------------------------------------------------- decoding

    def decode(
        self, input_ids: Tensor, media: Media, caches: FusionCaches | None = None, **packed: Any
    ) -> Tensor:
        """Logits for ``input_ids`` (which continue the cached tokens when ``caches`` is given)."""
        return self.decoder.lm_head(self.hidden_states(input_ids, media, caches, **packed))

    def hidden_states(
        self,
        input_ids: Tensor,
        media: Media,
        caches: FusionCaches | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The decoder's final-norm output for ``input_ids``, before the output head."""
        x = self.embed(input_ids)
        start, length = (caches.decoder[0].length if caches else 0), input_ids.shape[1]
        cos, sin = self.decoder.rope(start, length, x, position_ids)
        segments = None
        if segment_ids is not None:
            segments = media.segments if media.segments is not None else Segments.of(segment_ids)
        image_mask = media.image_mask[:, start : start + length]
        video_mask = None if media.video_mask is None else media.video_mask[:, start : start + length]
        every = self.config.fusion.every
        for i, block in enumerate(self.decoder.layers):
            if (i + 1) % every == 0:
                j = (i + 1) // every - 1
                if self.video is not None and (j + 1) % self.config.video.every == 0:
                    v = (j + 1) // self.config.video.every - 1
                    x = self.video.layers[v](
                        x, media.video_tokens, video_mask, caches.video[v] if caches else None
                    )
                cache = caches.image[j] if caches else None
                x = self.fusion.layers[j](
                    x, media.image_tokens, image_mask, cache, media.image_is_tile, media.segments
                )
            x = block(x, cos, sin, caches.decoder[i] if caches else None, segments)
        return self.decoder.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        labels: Tensor | None = None,
        videos: Tensor | None = None,
        video_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        aspect_ratio_ids: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
    ) -> ModelOutput:
        """Logits, or the loss when ``labels`` are given (then no logits: see ``chunked_lm_loss``).

        input_ids: (B, S) token ids; ids >= vocab_size are the new special tokens (image token first).
        images: (B, C, H, W) or (B, N, C, H, W); rows with fewer images pad with any image and mask it out.
        encoder_mask: (B, S, N) or (B, S) bool, True where token s sees image n; default: built from the
            image tokens in ``input_ids`` (``media_attention_mask``).
        labels: (B, S) aligned with ``input_ids`` (shifted here), -100 where no loss is taken; new special
            tokens are never targets (the output head covers the vocabulary only).
        videos: (B, F, C, H, W), any F; video_mask: (B, S) bool, default from the video token.
        position_ids, segment_ids: (B, S) for packed rows (several samples per row): each token's position
            within its sample and the sample's index (padding: a segment of its own).
        aspect_ratio_ids, aspect_ratio_mask: Mllama tiles (vision.max_num_tiles > 1), where images are
            (B, N, T, C, S, S) or (B, T, C, S, S): ids (B, N) or (B,), 0 for no image; mask (B, N, T) or
            (B, T), 1 for real tiles (default: the first tiles of each id's grid).
        """
        media = self.encode_media(
            input_ids, images, encoder_mask, videos, video_mask, segment_ids, aspect_ratio_ids,
            aspect_ratio_mask,
        )
        hidden = self.hidden_states(input_ids, media, None, position_ids, segment_ids)
        if labels is None:
            return ModelOutput(self.decoder.lm_head(hidden), None)
        loss, per_label = chunked_lm_loss(
            hidden, self.decoder.lm_head, labels, self.config.decoder.vocab_size, self.loss_chunks
        )
        return ModelOutput(None, loss, per_label)

    def new_caches(self) -> FusionCaches:
        return FusionCaches(
            decoder=self.decoder.new_caches(),
            image=[KVCache() for _ in self.fusion.layers],
            video=[KVCache() for _ in (self.video.layers if self.video is not None else [])],
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        use_cache: bool = True,
        videos: Tensor | None = None,
        video_mask: Tensor | None = None,
        aspect_ratio_ids: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Prompt (B, S) -> prompt and new tokens. New tokens see the media the last prompt token sees.

        ``sampling``: temperature (0 = greedy), top_p, eos_token_id, generator (see decoder.generate).
        """
        media = self.encode_media(
            input_ids, images, encoder_mask, videos, video_mask, None, aspect_ratio_ids, aspect_ratio_mask
        )
        total = input_ids.shape[1] + max_new_tokens

        def extend(mask: Tensor | None) -> Tensor | None:
            if mask is None:
                return None
            return torch.cat([mask, mask[:, -1:].expand(-1, total - mask.shape[1], -1)], dim=1)

        media = media._replace(image_mask=extend(media.image_mask), video_mask=extend(media.video_mask))
        caches = self.new_caches() if use_cache else None
        return generate(
            lambda tokens, c: self.decode(tokens, media, c), input_ids, max_new_tokens, caches, **sampling
        )
