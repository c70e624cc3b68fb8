"""Task ``clip``: contrastive (InfoNCE) pretraining of the image encoder against a small text tower.

At full scale the encoder is a pretrained CLIP ViT; for the offline tiny recipe this step makes one. The
image embedding is the element-wise max over the encoder's patch tokens (each layer-normed and projected):
the sample scenes are a few small shapes on a large background, and an average (or a class token that
starts out as one) is dominated by the background, so the tower barely learned (held-out top-1 in 32 at
chance after 300 steps); max-pooling lets each patch act as a detector. The text embedding is a small
causal transformer's state at the end-of-text token (projected). Both are L2-normalised and compared with
a learned temperature, in both directions, against the other rows of the micro-batch (no cross-rank
gather: at this scale the per-rank batch is the negative set). The encoder's parameters are named
``encoder.*`` as in the fused model; ``encoder.safetensors`` holds just them for the later stages.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmforge.training.config import TrainConfig
from vlmforge.training.data import SampleFormat
from vlmforge.training.model.config import IGNORE_INDEX, DecoderConfig, ModelConfig
from vlmforge.training.model.decoder import Block, RMSNorm, init_weights, rope_frequencies
from vlmforge.training.model.vision import VisionEncoder
from vlmforge.training.tokenizer import TextTokenizer

# For the FLOP count (training/flops.py); the towers' attention is not counted.
TOKENS = {"encoder": "image", "visual_proj": "image", "visual_norm": "image", "text": "text"}
FIRST = ("encoder", "text")


def attention_table(mc: ModelConfig) -> dict[str, tuple[str, int]]:
    return {}


class TextTower(nn.Module):
    """Token embedding, causal RoPE blocks, final norm; the state at the last real token, projected."""

    def __init__(self, cfg: DecoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, embed_dim, bias=False)
        self.apply(init_weights)

    def forward(self, input_ids: Tensor, last: Tensor) -> Tensor:
        x = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=x.device).float()
        freqs = positions[:, None] * rope_frequencies(self.cfg, x.device)[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)[torch.arange(x.shape[0], device=x.device), last]
        return self.proj(x)


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig, text_layers: int, embed_dim: int) -> None:
        super().__init__()
        self.encoder = VisionEncoder(cfg.vision)
        self.visual_norm = nn.LayerNorm(cfg.vision.dim, eps=cfg.vision.norm_eps)
        self.visual_proj = nn.Linear(cfg.vision.dim, embed_dim, bias=False)
        dec = cfg.decoder
        text_cfg = DecoderConfig(
            vocab_size=dec.vocab_size,
            dim=cfg.vision.dim,
            num_layers=text_layers,
            num_heads=cfg.vision.num_heads,
            num_kv_heads=cfg.vision.num_heads,
            mlp_dim=cfg.vision.mlp_dim,
            rope_theta=10000.0,
            rope_scaling=None,
            max_seq_len=dec.max_seq_len,
            bos_token_id=dec.bos_token_id,
            eos_token_id=dec.eos_token_id,
        )
        self.text = TextTower(text_cfg, embed_dim)
        self.logit_scale = nn.Parameter(
            torch.full((1,), math.log(1 / 0.07))
        )  # 1-d: DeepSpeed broadcasts as bytes
        init_weights(self.visual_proj)

    def embed_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings: the max over the projected patch tokens."""
        out = self.encoder(images)
        patches = self.visual_proj(self.visual_norm(out.last_hidden_state[:, 1 : out.num_tokens]))
        return F.normalize(patches.amax(dim=1), dim=-1)

    def embed_text(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """L2-normalised text embeddings: the projected state at the end-of-text token."""
        positions = torch.arange(labels.shape[1], device=labels.device)
        last = torch.where(labels != IGNORE_INDEX, positions, -1).amax(dim=1)
        return F.normalize(self.text(input_ids, last), dim=-1)

    def embed(self, input_ids: Tensor, labels: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised (image, text) embeddings."""
        return self.embed_image(images), self.embed_text(input_ids, labels)

    def forward(self, input_ids: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        image, text = self.embed(input_ids, labels, images)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * image @ text.T
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def build_model(cfg: TrainConfig, model_cfg: ModelConfig) -> CLIP:
    return CLIP(model_cfg, cfg.model.text_tower_layers, cfg.model.embed_dim)


def sample_format(cfg: TrainConfig, model_cfg: ModelConfig, tok: TextTokenizer) -> SampleFormat:
    return SampleFormat(
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        image_token_id=None,
        image_size=model_cfg.vision.image_size,
        max_tokens=cfg.data.max_tokens,
        synthetic_caption_prob=cfg.data.synthetic_caption_prob,
        encode=tok.encode,
    )


def loss(model: Any, batch: dict[str, Any]) -> Tensor:
    return model(input_ids=batch["input_ids"], labels=batch["labels"], images=batch["images"])


@torch.no_grad()
def evaluate(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out InfoNCE loss and image-to-text top-1 accuracy within each batch."""
    module = getattr(model, "module", model)
    losses, hits, rows = [], 0, 0
    for batch in batches:
        if len(batch["ids"]) < 2:
            continue
        losses.append(float(loss(model, batch)))
        image, text = module.embed(batch["input_ids"], batch["labels"], batch["images"])
        hits += int(((image @ text.T).argmax(dim=1) == torch.arange(len(image), device=image.device)).sum())
        rows += len(image)
    return {"loss": sum(losses) / max(len(losses), 1), "top1": hits / max(rows, 1)}


def exports(model: nn.Module) -> dict[str, Any]:
    return {
        "model.safetensors": lambda name, p: True,
        "encoder.safetensors": lambda name, p: name.startswith("encoder."),
    }
