"""Optimizer, learning-rate schedule and the DeepSpeed config of a run.

Only trainable parameters reach the optimizer, so a frozen LLM has no optimizer state and no gradients
(ZeRO-3 included). Weight decay is off for embeddings, norms, gates and biases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import TrainConfig

# Keys the run config owns; a DeepSpeed JSON that sets them is refused rather than silently overridden.
OWNED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
    "bf16",
    "fp16",
)


# Parameters named so take no weight decay: learned embeddings that are not nn.Embedding tables (position,
# class, view and frame embeddings) and the Perceiver's latent queries.
NO_DECAY_SUFFIXES = ("embedding", "latents")
# The cross-attention adapters' tanh gates and tile biases, and the gates of Mllama's tile tables
# (model/tiles.py): they start at zero (or at a fixed bias) and move about one learning rate per step, so
# they get their own group whose ``lr_scale`` multiplies the lr.
GATE_SUFFIXES = ("attn_gate", "mlp_gate", "tile_bias", "tile_embedding.gate", "tile_position_embedding.gate")


def param_groups(model: nn.Module, weight_decay: float, gate_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters, the same rule for every task: decay, no decay (biases,
    norms and other 1-d parameters, embedding tables, NO_DECAY_SUFFIXES), and the gates (GATE_SUFFIXES,
    no decay, ``lr_scale``). Empty groups are left out."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(GATE_SUFFIXES):
            gates.append(p)
        elif (  # a ZeRO-3 partitioned parameter (train.py builds them so) has its shape in ds_shape
            len(getattr(p, "ds_shape", p.shape)) < 2
            or id(p) in embeddings
            or name.endswith(NO_DECAY_SUFFIXES)
        ):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": gates, "weight_decay": 0.0, "lr_scale": gate_lr_scale},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("model.trainable: nothing to train (every component is frozen)")
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.gate_lr_scale)
    for group in groups:
        group["lr"] = o.lr * group.pop("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=False)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    o, steps = cfg.optim, cfg.train.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, steps, o.min_lr_ratio)
    )


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16" if torch.cuda.is_available() else "fp32"


def deepspeed_config(cfg: TrainConfig, precision: str) -> dict[str, Any]:
    """The JSON of `train.deepspeed` with batch size, accumulation, clipping and precision filled in."""
    path = Path(cfg.train.deepspeed)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: file not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {e}") from e
    owned = [k for k in OWNED_KEYS if k in ds]
    if owned:
        raise ConfigError(f"train.deepspeed: {path} sets {owned}; these come from the train config")
    zero = ds.get("zero_optimization", {})
    if zero.get("stage", 0) in (1, 2, 3) and not (
        zero.get("contiguous_gradients", True) and zero.get("reduce_scatter", True)
    ):
        # With both off, ZeRO on the CPU (gloo) dropped gradient buckets here (DeepSpeed 0.19.8).
        raise ConfigError(f"train.deepspeed: {path} must keep contiguous_gradients and reduce_scatter on")
    ds.update(
        train_micro_batch_size_per_gpu=cfg.train.micro_batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        gradient_clipping=cfg.optim.grad_clip,
        bf16={"enabled": precision == "bf16"},
    )
    return ds
