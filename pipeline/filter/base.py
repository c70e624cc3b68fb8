"""The stage contract: a stage answers keep or drop-with-reason for every row of an Arrow batch.

The base class does the splitting, counting and timing, so no stage can forget the accounting.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.pipeline.cache.row_cache import RowCache
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.report.thumbnails import gallery_thumbnails
from vlmforge.pipeline.schema import REJECTED_SCHEMA


@dataclass
class Verdict:
    """A stage's answer for one batch: a reason per row (None keeps it) and columns to attach."""

    reasons: list[str | None]
    details: list[str | None] | None = None
    columns: dict[str, pa.Array] = field(default_factory=dict)


def rejected_rows(
    batch: pa.Table,
    stage: str,
    reasons: list[str],
    details: list[str | None],
    caption_chars: int,
    thumbnails: pa.Array | None = None,
) -> pa.Table:
    """Build the `rejected/` rows for `batch` (which holds only the rejected rows).

    `thumbnails` (see `report.thumbnails.gallery_thumbnails`) is null for every row when not given.
    """
    n = batch.num_rows
    caption = batch.column("caption") if "caption" in batch.column_names else pa.nulls(n, pa.string())
    if caption_chars >= 0:
        caption = pc.utf8_slice_codeunits(caption.cast(pa.string()), 0, caption_chars)
    return pa.Table.from_arrays(
        [
            batch.column("id"),
            pa.array([stage] * n, pa.string()),
            pa.array(reasons, pa.string()),
            pa.array(details, pa.string()),
            batch.column("source") if "source" in batch.column_names else pa.nulls(n, pa.string()),
            caption,
            thumbnails if thumbnails is not None else pa.nulls(n, pa.binary()),
        ],
        schema=REJECTED_SCHEMA,
    )


class Stage(ABC):
    """A filter over Arrow batches. Subclasses set `name` and implement `decide`."""

    name: ClassVar[str]
    rejected_caption_chars: int = 300
    gallery_per_reason: int = 4  # rejected rows per reason per part (per `stats` object) given a thumbnail

    def __init__(self) -> None:
        self.stats = StageStats(self.name)

    @abstractmethod
    def decide(self, batch: pa.Table) -> Verdict:
        """Return a reason per row (None keeps the row) and any columns to attach to the batch."""

    def __call__(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Split `batch` into (kept rows with the new columns, rejected rows); count both."""
        start = time.perf_counter()
        verdict = self.decide(batch)
        if len(verdict.reasons) != batch.num_rows:
            raise RuntimeError(f"stage {self.name} answered {len(verdict.reasons)} of {batch.num_rows} rows")
        for name, column in verdict.columns.items():
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, column)
            else:
                batch = batch.append_column(name, column)
        drop = pa.array([r is not None for r in verdict.reasons], pa.bool_())
        kept = batch.filter(pc.invert(drop))
        dropped = batch.filter(drop)
        reasons = [r for r in verdict.reasons if r is not None]
        details = verdict.details or [None] * batch.num_rows
        dropped_details = [d for r, d in zip(verdict.reasons, details, strict=True) if r is not None]
        thumbnails = gallery_thumbnails(dropped, reasons, self.stats.gallery, self.gallery_per_reason)
        rejected = rejected_rows(
            dropped, self.name, reasons, dropped_details, self.rejected_caption_chars, thumbnails
        )
        self.stats.rows_in += batch.num_rows
        self.stats.rows_out += kept.num_rows
        self.stats.reasons.update(reasons)
        self.stats.seconds += time.perf_counter() - start
        return kept, rejected


class MeasuredStage(Stage):
    """A stage whose costly per-row measurement (a fastText call, an image decode) is kept apart from the
    cheap decision on it. With a `memo` (the part's measurements from earlier runs, keyed by the row's
    ordinal in its part), a run whose thresholds changed re-decides without measuring again."""

    measures: ClassVar[pa.Schema]  # the measurement columns, plus `row`
    memo: RowCache | None = None

    @abstractmethod
    def measure(self, batch: pa.Table) -> pa.Table:
        """The measurements of every row of `batch` (the `measures` columns other than `row`)."""

    @abstractmethod
    def judge(self, batch: pa.Table, measured: pa.Table) -> Verdict:
        """The verdict on `batch` from its rows' measurements (same order)."""

    def usable(self, measured: pa.Table) -> np.ndarray:
        """Which cached measurements serve this run (all, unless a stage measures only what it needs)."""
        return np.ones(measured.num_rows, bool)

    def decide(self, batch: pa.Table) -> Verdict:
        if self.memo is None:
            return self.judge(batch, self.measure(batch))
        hits = self.memo.hits
        measured = self.memo.results(batch, self.measure, self.usable)
        if self.memo.hits > hits:
            self.stats.counters["cached"] += self.memo.hits - hits
        return self.judge(batch, measured)
