"""Phase 3: image-text alignment, the cosine similarity of a contrastive model's two embeddings per pair.

Two scorers: this project's own encoder (the output directory of a ``clip`` training run) and an open_clip
model from a local weights file. ``AlignmentScore`` scores Arrow batches; the filter runs as two passes:
every part is scored and histogrammed, the histograms are summed into a global threshold
(``threshold_from``), then rows below it are dropped.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import Tensor

from vlmforge.pipeline.align.torchvision_cpu import declare_torchvision_ops
from vlmforge.pipeline.config import AlignmentConfig
from vlmforge.training import clip
from vlmforge.training.config import TrainConfig
from vlmforge.training.data import Sample, SampleFormat, collate, make_sample
from vlmforge.training.model.config import ModelConfig
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.weights import load_into, read_metadata

_RNG = np.random.default_rng(0)  # make_sample's caption choice; unused (synthetic_caption_prob is 0)


class Scorer(Protocol):
    def score(self, images: list[bytes], captions: list[str]) -> np.ndarray:
        """Cosine similarity per (image, caption) pair, float32; NaN where the image does not decode."""


def _prepare(items: list[Any], prepare: Callable[[Any], Any]) -> tuple[list[Any], np.ndarray]:
    """`prepare` applied to each item; those that raise are left out, and the mask says which were kept."""
    out, ok = [], np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        try:
            out.append(prepare(item))
        except Exception:  # Pillow raises many types on hostile or truncated data
            continue
        ok[i] = True
    return out, ok


def _scatter(values: Tensor, ok: np.ndarray) -> np.ndarray:
    scores = np.full(len(ok), np.nan, dtype=np.float32)
    scores[ok] = values.float().cpu().numpy()
    return scores


class VlmforgeClipScorer:
    """The contrastive encoder a ``clip`` training run left in `checkpoint_dir` (model.safetensors with
    its model config, config.json with the run's text tower, tokenizer and sequence length)."""

    def __init__(self, checkpoint_dir: str | Path, device: str = "cpu", tokenizer: str | None = None) -> None:
        run_dir = Path(checkpoint_dir)
        weights, run_config = run_dir / "model.safetensors", run_dir / "config.json"
        for path in (weights, run_config):
            if not path.is_file():
                raise FileNotFoundError(f"alignment.checkpoint: {path} not found (not a clip run output?)")
        cfg = TrainConfig.model_validate(json.loads(run_config.read_text()))
        if cfg.task != "clip":
            raise ValueError(f"alignment.checkpoint: {run_dir} is a {cfg.task!r} run, not a clip run")
        tokenizer_path = Path(tokenizer or cfg.tokenizer or "")
        if not tokenizer_path.is_file():
            raise FileNotFoundError(
                f"the clip run's tokenizer {str(tokenizer_path)!r} is not found; set alignment.tokenizer"
            )
        mc = ModelConfig.from_dict(json.loads(read_metadata(weights)["config"]))
        self.model = clip.build_model(cfg, mc)
        load_into(self.model, weights)
        self.model.to(device).eval()
        self.device = torch.device(device)
        fmt = clip.sample_format(cfg, mc, TextTokenizer(tokenizer_path))
        self.fmt: SampleFormat = dataclasses.replace(fmt, synthetic_caption_prob=0.0)

    def _sample(self, pair: tuple[bytes, str]) -> Sample:
        return make_sample({"id": "", "image": pair[0], "caption": pair[1]}, self.fmt, _RNG)

    @torch.no_grad()
    def score(self, images: list[bytes], captions: list[str]) -> np.ndarray:
        samples, ok = _prepare(list(zip(images, captions, strict=True)), self._sample)
        if not samples:
            return _scatter(torch.zeros(0), ok)
        batch = collate(samples, self.fmt.eos_id, self.fmt.image_size)
        ids, labels, pixels = (batch[k].to(self.device) for k in ("input_ids", "labels", "images"))
        image, text = self.model.embed(ids, labels, pixels)
        return _scatter((image * text).sum(dim=-1), ok)


def import_open_clip() -> ModuleType:
    """open_clip, importable beside torch's CPU build (see `vlmforge.pipeline.align.torchvision_cpu`)."""
    declare_torchvision_ops()
    import open_clip

    return open_clip


class OpenClipScorer:
    """An open_clip model built from an architecture name or a model-config JSON, with weights from a local
    file (never a pretrained tag, which open_clip would download)."""

    def __init__(self, model_name: str, checkpoint: str | Path, device: str = "cpu") -> None:
        open_clip = import_open_clip()
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"alignment.checkpoint: open_clip weights file {checkpoint} not found")
        if model_name.endswith(".json"):
            if not Path(model_name).is_file():
                raise FileNotFoundError(f"alignment.model_name: model config {model_name} not found")
            open_clip.add_model_config(model_name)
            model_name = Path(model_name).stem
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(checkpoint), device=device
        )
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = torch.device(device)

    def _image(self, data: bytes) -> Tensor:
        with Image.open(io.BytesIO(data)) as img:
            return self.preprocess(img.convert("RGB"))

    @torch.no_grad()
    def score(self, images: list[bytes], captions: list[str]) -> np.ndarray:
        pixels, ok = _prepare(images, self._image)
        if not pixels:
            return _scatter(torch.zeros(0), ok)
        texts = [c for c, good in zip(captions, ok, strict=True) if good]
        image = self.model.encode_image(torch.stack(pixels).to(self.device), normalize=True)
        text = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
        return _scatter((image * text).sum(dim=-1), ok)


def build_scorer(cfg: AlignmentConfig, device: str) -> Scorer:
    if cfg.checkpoint is None:
        raise ValueError("alignment.checkpoint is required")
    if cfg.scorer == "open_clip":
        if cfg.model_name is None:
            raise ValueError("alignment.model_name is required for the open_clip scorer")
        return OpenClipScorer(cfg.model_name, cfg.checkpoint, device)
    return VlmforgeClipScorer(cfg.checkpoint, device, cfg.tokenizer)


class AlignmentScore:
    """Scores Arrow batches (id, image, caption) into (id, clip_score); the scorer is loaded once."""

    def __init__(self, cfg: AlignmentConfig) -> None:
        self.cfg = cfg
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.scorer = build_scorer(cfg, device)
        self.counters: Counter = Counter()

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = batch.column("image").to_pylist()
        captions = [c or "" for c in batch.column("caption").to_pylist()]
        scores = np.full(batch.num_rows, np.nan, dtype=np.float32)
        has_image = np.array([im is not None for im in images], dtype=bool)
        rows = np.flatnonzero(has_image)
        for start in range(0, len(rows), self.cfg.batch_rows):
            chunk = rows[start : start + self.cfg.batch_rows]
            scores[chunk] = self.scorer.score([images[i] for i in chunk], [captions[i] for i in chunk])
        undecodable = has_image & np.isnan(scores)
        self.counters.update(
            scored=int((~np.isnan(scores)).sum()),
            no_image=int((~has_image).sum()),
            undecodable=int(undecodable.sum()),
        )
        column = pa.array(scores, pa.float32(), mask=np.isnan(scores))
        return pa.table({"id": batch.column("id"), "clip_score": column})
