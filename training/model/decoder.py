"""Llama decoder: RMSNorm, RoPE with Llama 3 frequency scaling, grouped-query attention, SwiGLU.

Parameter names follow HF's ``LlamaForCausalLM`` (without its ``model.`` prefix), so a Llama checkpoint
loads by name. Packed sequences (several samples in one row, ``data.packing``) give each token its position
within its own sample (``position_ids``) and attend within their sample only (``segment_ids``): attention
runs sample by sample (``Segments``: samples bucketed by length, each bucket padded to its own longest),
which equals the block-causal mask (``block_causal_mask``) without computing the masked-out blocks. Also
here: the KV cache and the decoding loop (greedy and top-p sampling) that the fused model reuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmforge.training.model.config import DecoderConfig


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases (apply with ``module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_frequencies(cfg: DecoderConfig, device: torch.device | None = None) -> Tensor:
    """RoPE inverse frequencies; with ``rope_scaling`` the low frequencies are stretched as in Llama 3."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    medium = torch.where(wavelen < high_freq_wavelen, inv_freq, smoothed)
    return torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, medium)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, S, head_dim) by position; the rotate-half layout of HF checkpoints. cos and sin are
    (S, head_dim), or (B, 1, S, head_dim) with per-row positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def block_causal_mask(segment_ids: Tensor) -> Tensor:
    """(B, S) segment ids -> (B, 1, S, S) bool: query s sees key t when both are in the same segment and
    t <= s. Every token sees itself, so no row of the attention is empty (padding is a segment of its own).
    """
    s = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


MAX_BUCKETS = 4  # attention calls per layer for packed rows; more buckets pad less but cost a call each


def length_buckets(lengths: Sequence[int], max_buckets: int = MAX_BUCKETS) -> list[list[int]]:
    """Samples (indices into ``lengths``) in at most ``max_buckets`` groups, longest first, each to be padded
    to its own longest: of the splits of the lengths in descending order, the one that pads to the fewest
    causal query-key pairs. Dynamic programming over the distinct lengths (a split inside a run of equal
    lengths is never cheaper than the one before it), a (u, u) array step per group for u distinct lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not order:
        return []
    values, counts = np.unique(np.array(lengths, dtype=np.float64), return_counts=True)
    values, counts = values[::-1], counts[::-1]  # descending, as ``order``
    before = np.concatenate([[0], np.cumsum(counts)])  # samples before each distinct length in ``order``
    u = len(values)
    start, end = np.arange(u)[:, None], np.arange(u + 1)[None, :]
    # cost[i, j]: the samples of distinct lengths i .. j - 1, padded to values[i]
    pairs = (values * (values + 1) / 2)[:, None]
    cost = np.where(end > start, (before[None, :] - before[:u, None]) * pairs, np.inf)
    best = np.full(u + 1, np.inf)
    best[0] = 0.0
    back, totals = [], []
    for _ in range(min(max_buckets, u)):
        total = best[:u, None] + cost
        back.append(total.argmin(axis=0))
        best = total.min(axis=0)
        totals.append(best[u])
    groups, j = [], u
    for level in reversed(range(int(np.argmin(totals)) + 1)):  # fewest groups among equal costs
        i = int(back[level][j])
        groups.append(order[before[i] : before[j]])
        j = i
    return groups[::-1]


@dataclass
class Segments:
    """The samples of packed rows as batches of their own, for attention without the rows' S x S cost.

    The samples are sorted by length into a few buckets (``length_buckets``), each padded to its own
    longest, not to the micro-batch's longest: ``buckets`` holds (samples, length) per bucket, and
    ``gather_index`` (P,) the flattened (B * S) row position of each of the P slots of the buckets laid end
    to end (a padding slot repeats its sample's last token; it is computed and thrown away).
    ``scatter_index`` (B * S,) is the slot of each row position, P (a zero row) for the rows' padding.
    Attention gathers q, k and v into the buckets, runs causally per sample and scatters back: what
    ``block_causal_mask`` allows, computed without the masked-out blocks. Built once per forward and
    shared by every layer. ``image`` (num,) is the flattened (B * N) slot of each sample's image (-1:
    none), in bucket order, and ``sees_image`` (B, S) the tokens that see an image (the cross-attention in
    fusion.py; a sample's tokens see its one image or none).
    """

    rows: int
    length: int
    buckets: list[tuple[int, int]]
    gather_index: Tensor
    scatter_index: Tensor
    image: Tensor | None = None
    sees_image: Tensor | None = None
    num_images: int = 0

    @staticmethod
    def of(
        segment_ids: Tensor, encoder_mask: Tensor | None = None, max_buckets: int = MAX_BUCKETS
    ) -> Segments:
        """From (B, S) segment ids (-1: padding) and, for the images, the (B, S, N) encoder mask."""
        b, s = segment_ids.shape
        flat = segment_ids.flatten()
        positions = (flat >= 0).nonzero().flatten()
        if len(positions) == 0:
            raise ValueError("packed rows hold no sample: segment_ids are all -1 (padding)")
        key = (positions // s) * (int(flat.max()) + 2) + flat[positions]  # samples are contiguous in a row
        _, counts = torch.unique_consecutive(key, return_counts=True)
        lengths = np.array(counts.tolist())
        starts = np.cumsum(lengths) - lengths
        groups = length_buckets(lengths.tolist(), max_buckets)
        order = np.concatenate(groups)
        longest = [int(lengths[g[0]]) for g in groups]
        sample = np.concatenate([np.repeat(g, n) for g, n in zip(groups, longest, strict=True)])
        offset = np.concatenate([np.tile(np.arange(n), len(g)) for g, n in zip(groups, longest, strict=True)])
        real = offset < lengths[sample]
        src = torch.from_numpy(starts[sample] + np.minimum(offset, lengths[sample] - 1)).to(flat.device)
        gather_index = positions[src]
        slots = len(sample)
        scatter_index = torch.full((b * s,), slots, dtype=torch.long, device=flat.device)
        real_t = torch.from_numpy(real).to(flat.device)
        scatter_index[gather_index[real_t]] = torch.arange(slots, device=flat.device)[real_t]
        buckets = [(len(g), n) for g, n in zip(groups, longest, strict=True)]
        seg = Segments(b, s, buckets, gather_index, scatter_index)
        if encoder_mask is not None:
            n = encoder_mask.shape[-1]
            owner = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device), counts)
            per_token = encoder_mask.flatten(0, 1)[positions].float()  # (real tokens, N)
            seen = per_token.new_zeros((len(lengths), n)).index_add_(0, owner, per_token) > 0
            row_of = positions[torch.from_numpy(starts).to(flat.device)] // s
            image = torch.where(seen.any(dim=-1), row_of * n + seen.int().argmax(dim=-1), -1)
            seg.image = image[torch.from_numpy(order).to(flat.device)]
            seg.sees_image = encoder_mask.any(dim=-1)
            seg.num_images = n
        return seg

    def gather(self, x: Tensor) -> list[Tensor]:
        """(B, S, ...) -> one (samples, length, ...) tensor per bucket."""
        flat = x.reshape(self.rows * self.length, *x.shape[2:]).index_select(0, self.gather_index)
        sizes = [n * length for n, length in self.buckets]
        return [
            part.view(n, length, *x.shape[2:])
            for part, (n, length) in zip(flat.split(sizes), self.buckets, strict=True)
        ]

    def scatter(self, ys: list[Tensor]) -> Tensor:
        """One (samples, length, ...) tensor per bucket -> (B, S, ...), zeros at the padding of the rows."""
        rest = ys[0].shape[2:]
        flat = torch.cat([*(y.reshape(-1, *rest) for y in ys), ys[0].new_zeros((1, *rest))])
        return flat.index_select(0, self.scatter_index).view(self.rows, self.length, *rest)


class KVCache:
    """Keys and values of one attention layer for the tokens processed so far."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads and RoPE."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """``mask``: (B, 1, S, S) bool (``block_causal_mask``), or the packed rows' ``Segments``, instead
        of the causal mask (no cache then)."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if isinstance(mask, Segments):
            if cache is not None:
                raise ValueError("packed rows (Segments) do not use a KV cache")
            return self.o_proj(self._per_sample(q, k, v, cos, sin, mask))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(k, v)
        if mask is not None and past:
            raise ValueError("a block mask (packed sequences) cannot continue a KV cache")
        if mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # new tokens see all cached ones and, causally, each other
            mask = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    @staticmethod
    def _per_sample(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, seg: Segments) -> Tensor:
        """q, k, v (B, S, heads, head_dim) -> (B, S, heads * head_dim), causal within each sample, one
        attention call per bucket of samples."""
        # cos, sin: (B, 1, S, head_dim) per-row positions, or (S, head_dim) -> broadcast over heads at dim 2
        cos, sin = (t.transpose(1, 2) if t.dim() == 4 else t[:, None] for t in (cos, sin))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        outs = [
            F.scaled_dot_product_attention(
                qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), is_causal=True, enable_gqa=True
            ).transpose(1, 2)
            for qb, kb, vb in zip(seg.gather(q), seg.gather(k), seg.gather(v), strict=True)
        ]
        return seg.scatter(outs).flatten(2)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def _drop_tied_head(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict.pop(prefix + "lm_head.weight", None)


def _fill_tied_head(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    if prefix + "embed_tokens.weight" in state_dict:
        state_dict.setdefault(prefix + "lm_head.weight", state_dict[prefix + "embed_tokens.weight"])


class Decoder(nn.Module):
    """Decoder-only Llama: token ids (B, S) -> logits (B, S, vocab_size)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
            # The shared table once in a state dict, as in named_parameters: DeepSpeed's
            # exclude_frozen_parameters drops frozen parameters by those names, so a frozen tied decoder
            # would otherwise put its whole table in every checkpoint under the second name.
            self.register_state_dict_post_hook(_drop_tied_head)
            self.register_load_state_dict_pre_hook(_fill_tied_head)

    def rope(
        self, start: int, length: int, like: Tensor, position_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """cos and sin (length, head_dim) for positions start .. start + length - 1; with ``position_ids``
        (B, length) those positions instead, as (B, 1, length, head_dim)."""
        inv_freq = rope_frequencies(self.cfg, like.device)
        if position_ids is not None:
            freqs = position_ids[:, None, :, None].float() * inv_freq
            emb = torch.cat([freqs, freqs], dim=-1)
            return emb.cos().to(like.dtype), emb.sin().to(like.dtype)
        positions = torch.arange(start, start + length, device=like.device).float()
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(like.dtype), emb.sin().to(like.dtype)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def forward(
        self,
        input_ids: Tensor,
        caches: list[KVCache] | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits for ``input_ids``; with ``caches`` the ids continue the cached tokens. Packed rows: see the
        module docstring."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope(caches[0].length if caches else 0, input_ids.shape[1], x, position_ids)
        mask = None if segment_ids is None else Segments.of(segment_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, caches[i] if caches else None, mask)
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, use_cache: bool = True, **sampling: Any
    ) -> Tensor:
        """Prompt (B, S) -> prompt and new tokens (B, S + n). ``sampling``: see ``generate``."""
        caches = self.new_caches() if use_cache else None
        return generate(self, input_ids, max_new_tokens, caches, **sampling)


def sample_next_token(
    logits: Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """(B, V) logits -> (B,) ids: argmax at temperature 0, else nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    step: Callable[[Tensor, Any], Tensor],
    input_ids: Tensor,
    max_new_tokens: int,
    caches: Any = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Decoding loop shared by the decoder and the fused model.

    ``step(tokens, caches)`` returns logits for ``tokens``. With caches, the prompt is processed once and
    each later step feeds only the new token; without, every step recomputes the whole sequence. Rows that
    produced an end-of-sequence token keep emitting it; the loop stops when all rows have.
    """
    tokens = input_ids
    new = input_ids
    eos = None if eos_token_id is None else torch.tensor(eos_token_id, device=input_ids.device).flatten()
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = step(new if caches is not None else tokens, caches)[:, -1]
        next_ids = sample_next_token(logits, temperature, top_p, generator)
        if eos is not None:
            next_ids = torch.where(finished, eos[0], next_ids)
            finished |= torch.isin(next_ids, eos)
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        new = next_ids[:, None]
        if eos is not None and bool(finished.all()):
            break
    return tokens
