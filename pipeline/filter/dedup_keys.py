"""Exact-duplicate keys (image sha256, normalised-caption hash), computed in phase 1, resolved in phase 2."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from vlmforge.pipeline.filter.base import Stage, Verdict
from vlmforge.pipeline.filter.text import caption_key


class DedupKeys(Stage):
    """Attaches `sha256` of the image bytes and `caption_key`; never rejects."""

    name = "dedup_keys"

    def decide(self, batch: pa.Table) -> Verdict:
        images = batch.column("image").to_pylist()
        captions = batch.column("caption").to_pylist()
        return Verdict(
            reasons=[None] * batch.num_rows,
            columns={
                "sha256": pa.array([hashlib.sha256(b).hexdigest() for b in images], pa.string()),
                "caption_key": pa.array([caption_key(c) for c in captions], pa.string()),
            },
        )
