"""Synthetic captions (enrichment): this project's fusion model writes a caption for each image.

The model is loaded once per actor from ``synthetic_caption.checkpoint``, which is either
- a ``vlm`` training run directory (stage 1 or 2): its ``model.safetensors`` holds the tensors the run
  trained, the model config and the files the run was initialised from (the frozen decoder stays there);
  ``training.weights.load_fusion_model`` rebuilds the whole model from that chain. The tokenizer is the
  run's ``tokenizer`` (its ``config.json``), a path as the run saw it; or
- an Mllama directory (``config.json`` with model_type ``mllama``, e.g. written by
  ``training.model.hf.export_mllama``), imported as a single-tile model, with ``tokenizer.json`` beside it.

The prompt is how training starts a caption sample (``training.data.caption_prefix``): ``<|begin_of_text|>
<|image|>``, or ``<|image|><|begin_of_text|>`` for a run trained with ``data.image_first``, then the tokens
of ``prompt``; the caption is what the model writes after it (the prompt text
not included), up to EOS or ``max_new_tokens``, whitespace-normalised. Every row has the same prompt, so a
batch needs no padding and under greedy decoding a row's caption does not depend on the rows batched with
it. Top-p sampling draws from a generator seeded by ``seed`` and the ids of the batch, so a re-run of the
same rows gives the same captions. Images are read as in training (``vlmforge.training.data.load_image``: the
whole image resized to the model's square, no crop; a model with Mllama's tiles, ``vision.max_num_tiles`` > 1,
gets them as Mllama's processor makes them, ``vlmforge.training.model.tiling``). A row whose image does not
decode (or cannot be tiled), or whose caption comes out empty, gets null.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch import Tensor

from vlmforge.pipeline.config import SyntheticCaptionConfig
from vlmforge.training.data import caption_prefix, load_image
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.hf import import_mllama
from vlmforge.training.model.tiling import BadImage, TiledImage, collate_tiles, load_tiled_image, pad_tiles
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.weights import load_fusion_model

# What Pillow raises for bytes that are not a whole, readable image.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_captioner(
    checkpoint: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[FusionModel, TextTokenizer]:
    """The fused model (eval mode, on CPU) and its tokenizer from a vlm run or an Mllama directory."""
    path = Path(checkpoint)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"synthetic_caption.checkpoint: no {config_path} (expected a vlm run or an Mllama directory)"
        )
    config = json.loads(config_path.read_text())
    if config.get("model_type") == "mllama":
        model = import_mllama(path, dtype)
        tokenizer = tokenizer or path / "tokenizer.json"
    elif config.get("task") == "vlm":
        model = load_fusion_model(path / "model.safetensors").to(dtype)
        tokenizer = tokenizer or config["tokenizer"]
    else:
        raise ValueError(
            f"synthetic_caption.checkpoint: {path} is neither a vlm training run nor an Mllama checkpoint "
            f"(task {config.get('task')!r}, model_type {config.get('model_type')!r})"
        )
    tok = TextTokenizer(tokenizer)
    d = model.config.decoder
    tok.check_model(d.vocab_size, model.config.image_token_id, d.bos_token_id, d.eos_token_id)
    return model.eval(), tok


def image_first(checkpoint: str | Path) -> bool:
    """Whether a vlm run was trained with `data.image_first` (captions start `<|image|><|begin_of_text|>`).
    An Mllama directory records no such thing: it is prompted BOS first, as the runs it is exported from
    are by default."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    return bool(config.get("data", {}).get("image_first", False))


def batch_seed(seed: int, ids: list[str]) -> int:
    """A 63-bit seed from the configured seed and the ids of a batch."""
    digest = hashlib.blake2b("\n".join([str(seed), *ids]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class SyntheticCaption:
    """Caption the images of Arrow batches (columns ``id``, ``image``) with a fusion model checkpoint."""

    def __init__(self, cfg: SyntheticCaptionConfig) -> None:
        if not cfg.checkpoint:
            raise ValueError("synthetic_caption.checkpoint is not set")
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, cfg.dtype)
        model, self.tokenizer = load_captioner(cfg.checkpoint, cfg.tokenizer, self.dtype)
        self.model = model.to(self.device)
        mc = model.config
        prefix = caption_prefix(self.tokenizer.bos_id, mc.image_token_id, image_first(cfg.checkpoint))
        self.prompt = [*prefix, *self.tokenizer.encode(cfg.prompt)]
        eos = mc.decoder.eos_token_id
        self.eos_ids = sorted({self.tokenizer.eos_id, *(eos if isinstance(eos, list) else [eos])} - {None})
        self.image_size = mc.vision.input_size
        self.max_num_tiles = mc.vision.max_num_tiles
        self.counters: Counter = Counter()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``id`` and ``synthetic_caption`` of every row (null: the image did not decode, or no caption)."""
        ids = batch.column("id").to_pylist()
        column = batch.column("image")
        captions: list[str | None] = [None] * len(ids)
        step = self.cfg.batch_rows
        for start in range(0, len(ids), step):
            rows, images = [], []
            for row, data in enumerate(column.slice(start, step).to_pylist(), start):
                image = self.load(data)
                if image is None:
                    self.counters["bad_image"] += 1
                else:
                    rows.append(row)
                    images.append(image)
            if not images:
                continue
            texts = self.caption(images, batch_seed(self.cfg.seed, [ids[r] for r in rows]))
            for row, text in zip(rows, texts, strict=True):
                captions[row] = text or None
                self.counters["generated" if text else "empty"] += 1
        self.counters["rows"] += len(ids)
        return pa.table({"id": batch.column("id"), "synthetic_caption": pa.array(captions, pa.string())})

    def load(self, data: bytes | None) -> Tensor | TiledImage | None:
        """The image as the model reads it, or None when the bytes are missing or do not decode."""
        if data is None:
            return None
        try:
            if self.max_num_tiles > 1:
                return load_tiled_image(data, self.image_size, self.max_num_tiles)
            return load_image(data, self.image_size)
        except (BadImage, *DECODE_ERRORS):
            return None

    @torch.inference_mode()
    def caption(self, images: list[Tensor] | list[TiledImage], seed: int) -> list[str]:
        """Whitespace-normalised captions of decoded images ((3, H, W) each, as ``load_image`` gives, or
        ``TiledImage``s for a model with tiles)."""
        cfg = self.cfg
        tiles = {}
        if self.max_num_tiles > 1:
            flat = collate_tiles(images, self.image_size)
            pixels, mask = pad_tiles(flat["tiles"], flat["num_tiles"], self.max_num_tiles)
            ids = flat["aspect_ratio_ids"].to(self.device)
            tiles = {"aspect_ratio_ids": ids, "aspect_ratio_mask": mask.to(self.device)}
        else:
            pixels = torch.stack(images)
        pixels = pixels.to(self.device, self.dtype)
        prompt = torch.tensor([self.prompt] * len(images), device=self.device)
        generator = torch.Generator(self.device).manual_seed(seed) if cfg.temperature > 0 else None
        out = self.model.generate(
            prompt,
            pixels,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            eos_token_id=self.eos_ids,
            generator=generator,
            **tiles,
        )
        return [self.text(ids) for ids in out[:, len(self.prompt) :].tolist()]

    def text(self, ids: list[int]) -> str:
        """Decode new tokens up to the first EOS, whitespace-normalised."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return " ".join(self.tokenizer.decode(ids[:end]).split())
