"""Task ``text_lm``: pretrain the decoder alone on caption text (next-token loss on caption tokens).

At full scale the decoder is a pretrained Llama; for the offline tiny recipe this step makes one. The
module's parameters are named ``decoder.*``, exactly as in the fused model, so its weights file is a valid
``model.init_from`` entry of the later stages.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmforge.training.config import TrainConfig
from vlmforge.training.data import SampleFormat
from vlmforge.training.flops import decoder_attention
from vlmforge.training.model.config import IGNORE_INDEX, ModelConfig
from vlmforge.training.model.decoder import Decoder
from vlmforge.training.model.fusion import ModelOutput, token_losses
from vlmforge.training.tokenizer import TextTokenizer

# What each top-level component of the model processes, for the FLOP count (training/flops.py).
TOKENS = {"decoder": "text"}
FIRST: tuple[str, ...] = ()
attention_table = decoder_attention


def next_token_loss(logits: Tensor, labels: Tensor) -> ModelOutput:
    """Mean cross entropy of predicting labels[:, 1:] from positions :-1 (-100: no loss), and the loss at
    each label (``token_losses``)."""
    valid = labels[:, 1:] != IGNORE_INDEX
    per = F.cross_entropy(logits[:, :-1][valid].float(), labels[:, 1:][valid], reduction="none")
    return ModelOutput(None, per.sum() / valid.sum(), token_losses(labels, valid, per))


class TextLM(nn.Module):
    """The decoder with a loss; parameter names match the fused model's (``decoder.*``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.decoder = Decoder(cfg.decoder)

    def forward(self, input_ids: Tensor, labels: Tensor) -> ModelOutput:
        return next_token_loss(self.decoder(input_ids), labels)


def build_model(cfg: TrainConfig, model_cfg: ModelConfig) -> TextLM:
    return TextLM(model_cfg)


def sample_format(cfg: TrainConfig, model_cfg: ModelConfig, tok: TextTokenizer) -> SampleFormat:
    return SampleFormat(
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        image_token_id=None,
        image_size=None,
        max_tokens=cfg.data.max_tokens,
        synthetic_caption_prob=cfg.data.synthetic_caption_prob,
        encode=tok.encode,
        repeat_text=cfg.data.repeat_text,
    )


def output(model: Any, batch: dict[str, Any]) -> ModelOutput:
    """The loss of a batch and the loss at each label."""
    return model(input_ids=batch["input_ids"], labels=batch["labels"])


def loss(model: Any, batch: dict[str, Any]) -> Tensor:
    return output(model, batch).loss


@torch.no_grad()
def evaluate(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Token-weighted held-out loss."""
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(loss(model, batch)) * n
        count += n
    return {"loss": total / count}


def exports(model: nn.Module) -> dict[str, Any]:
    """Files written at the end of the run: name -> which parameters go in."""
    return {"model.safetensors": lambda name, p: True}
