"""Held-out evaluation sets: read one in any reader format with its class labels, and keep it apart from
training sets by image hash (sha256 of the bytes) and normalised caption (the exact-dedup key's form).

A training set is a curated output (its ``data/*.parquet``: the stored image bytes and the ``sha256`` of
the original ones, ``caption`` and ``original_caption``) or raw input in a reader format. Labels come from
a JSON-lines file of ``{"id": ..., "label": ...}`` (``labels.jsonl`` beside the shards by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.common.errors import InputError
from vlmforge.pipeline.config import InputConfig, load_yaml_model
from vlmforge.pipeline.filter.text import normalize_for_dedup
from vlmforge.pipeline.readers import discover_parts, read_part

LABELS_FILE = "labels.jsonl"


@dataclass
class PairKeys:
    """What makes two pairs the same: image sha256 (hex) and normalised caption."""

    images: set[str] = field(default_factory=set)
    captions: set[str] = field(default_factory=set)

    def add(self, image: bytes | None, caption: str | None) -> None:
        if image is not None:
            self.images.add(hashlib.sha256(image).hexdigest())
        if caption:
            self.captions.add(normalize_for_dedup(caption))

    def update(self, other: PairKeys) -> None:
        self.images |= other.images
        self.captions |= other.captions


@dataclass
class EvalSet:
    """Readable pairs of an evaluation set, in id order; `labels` None when the set has none."""

    path: str
    ids: list[str]
    images: list[bytes]
    captions: list[str]
    labels: list[str] | None
    unreadable: int = 0  # rows the reader could not assemble

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> EvalSet:
        pick = np.flatnonzero(keep).tolist()
        labels = [self.labels[i] for i in pick] if self.labels is not None else None
        return EvalSet(self.path, [self.ids[i] for i in pick], [self.images[i] for i in pick],
                       [self.captions[i] for i in pick], labels, self.unreadable)

    def fingerprint(self) -> str:
        """Changes when any pair or label changes: results on two sets compare only when it is equal."""
        h = hashlib.sha256()
        for i, (row_id, image, caption) in enumerate(zip(self.ids, self.images, self.captions, strict=True)):
            h.update(f"{row_id}\0{caption}\0{self.labels[i] if self.labels else ''}\0".encode())
            h.update(hashlib.sha256(image).digest())
        return h.hexdigest()[:16]


def is_curated(path: str | Path) -> bool:
    """A `vlmforge curate` output (it has data/*.parquet), as opposed to raw input."""
    return any((Path(path) / "data").glob("*.parquet"))


def input_config(path: str | Path, overrides: list[str] | None = None) -> InputConfig:
    """The reader settings for `path`: defaults, then `key=value` overrides of the curate `input` section."""
    return load_yaml_model(InputConfig, None, [f"path={json.dumps(str(path))}", *(overrides or [])],
                           label="eval set input settings")


def raw_pairs(path: str | Path, overrides: list[str] | None = None) -> Iterator[pa.Table]:
    """Raw batches (RAW_SCHEMA) of an input in any reader format (a curated output: its data/), read
    without Ray."""
    if is_curated(path):
        path, overrides = Path(path) / "data", ["id_column=id", *(overrides or [])]
    cfg = input_config(path, overrides)
    for part in discover_parts(cfg):
        yield from read_part(part, cfg, batch_rows=1024)


def pair_keys(path: str | Path) -> PairKeys:
    """Image hashes and normalised captions of a training set (curated output or raw input)."""
    keys = PairKeys()
    if is_curated(path):
        for file in sorted((Path(path) / "data").glob("*.parquet")):
            parquet = pq.ParquetFile(file)
            columns = [c for c in ("image", "sha256", "caption", "original_caption")
                       if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=columns, batch_size=1024):
                data = batch.to_pydict()
                for image in data.get("image", []):
                    keys.add(image, None)
                keys.images.update(h for h in data.get("sha256", []) if h)
                for column in ("caption", "original_caption"):
                    for caption in data.get(column, []):
                        keys.add(None, caption)
        return keys
    for batch in raw_pairs(path):
        for image, caption in zip(batch["image"].to_pylist(), batch["caption"].to_pylist(), strict=True):
            keys.add(image, caption)
    return keys


def read_labels(path: str | Path) -> dict[str, str]:
    """id -> class label from a JSON-lines file of {"id": ..., "label": ...}."""
    labels: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                labels[str(row["id"])] = str(row["label"])
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{n}: expected {{\"id\": ..., \"label\": ...}} ({e})") from None
    return labels


def read_eval_set(
    path: str | Path, labels_path: str | Path | None = None, overrides: list[str] | None = None
) -> EvalSet:
    """The readable pairs of an evaluation set, sorted by id, with labels when a labels file is given or
    `path`/labels.jsonl exists (every pair must then have one)."""
    if not Path(path).exists():
        raise InputError(f"--eval-set: {path} not found (make one with `vlmforge sample-data DIR --eval`)")
    rows: dict[str, tuple[bytes, str]] = {}
    unreadable = 0
    for batch in raw_pairs(path, overrides):
        for row_id, image, caption, error in zip(
            *(batch[c].to_pylist() for c in ("id", "image", "caption", "read_error")), strict=True
        ):
            if error is None and caption and caption.strip():
                rows[row_id] = (image, caption)
            else:
                unreadable += 1
    if not rows:
        raise InputError(f"--eval-set: no readable image-text pairs in {path}")
    ids = sorted(rows)
    default = Path(path) / LABELS_FILE
    labels_path = labels_path or (default if default.is_file() else None)
    labels = None
    if labels_path is not None:
        by_id = read_labels(labels_path)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(f"{labels_path}: no label for {len(missing)} pair(s), e.g. {missing[0]!r}")
        labels = [by_id[i] for i in ids]
    return EvalSet(str(path), ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids], labels, unreadable)


def overlap(eval_set: EvalSet, keys: PairKeys) -> dict[str, np.ndarray]:
    """Masks of the eval pairs whose image hash, or whose normalised caption, a training set holds."""
    images = np.array([hashlib.sha256(b).hexdigest() in keys.images for b in eval_set.images], dtype=bool)
    captions = np.array([normalize_for_dedup(c) in keys.captions for c in eval_set.captions], dtype=bool)
    return {"image": images, "caption": captions}
