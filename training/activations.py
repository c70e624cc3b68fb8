"""Activation checkpointing: recompute each transformer block's activations in the backward pass.

The block's ``forward`` is wrapped on the instance, so parameter names (and saved weights) do not change.
The wrapper calls the class's forward, whose sub-modules still run through their own ``__call__`` and thus
through DeepSpeed's ZeRO-3 gather hooks during the recomputation.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from vlmforge.training.model.decoder import Block
from vlmforge.training.model.fusion import CrossAttentionBlock
from vlmforge.training.model.vision import VisionBlock

BLOCKS = (Block, CrossAttentionBlock, VisionBlock)


def _checkpointed(module: nn.Module, *args: Any) -> Any:
    forward = functools.partial(type(module).forward, module)
    if not module.training:
        return forward(*args)
    return checkpoint(forward, *args, use_reentrant=False)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every decoder, cross-attention and vision block of `model`; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, BLOCKS):
            module.forward = functools.partial(_checkpointed, module)
            count += 1
    return count
