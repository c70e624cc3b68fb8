"""Rejects pairs the reader could not assemble (missing image or caption, unreadable member, ...)."""

from __future__ import annotations

import pyarrow as pa

from vlmforge.pipeline.filter.base import Stage, Verdict


class ReadCheck(Stage):
    """Turns the reader's `read_error` column into rejections, so they are counted like any other."""

    name = "read"

    def decide(self, batch: pa.Table) -> Verdict:
        return Verdict(
            reasons=batch.column("read_error").to_pylist(),
            details=batch.column("read_detail").to_pylist(),
        )
