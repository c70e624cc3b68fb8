"""The stage contract: a stage answers keep or drop-with-reason for every row of an Arrow batch.

The base class does the splitting, counting and timing, so no stage can forget the accounting.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.row_cache import RowCache
from pipeline.schema import REJECTED_SCHEMA
from pipeline.thumbnails import gallery_thumbnails


@dataclass
class Verdict:
    """A stage's answer for one batch: a reason per row (None keeps it) and columns to attach."""

    reasons: list[str | None]
    details: list[str | None] | None = None
    columns: dict[str, pa.Array] = field(default_factory=dict)


@dataclass
class StageStats:
    """Rows in/out and rejection reasons of one stage, summed over batches."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    # Rejected rows sampled for a gallery thumbnail, per reason, in this part (not written to the manifest).
    gallery: Counter = field(default_factory=Counter, repr=False, compare=False)

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: StageStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.reasons.update(other.reasons)
        self.counters.update(other.counters)
        self.seconds += other.seconds

    def to_dict(self) -> dict:
        return {
            "stage": self.name,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "counters": dict(sorted(self.counters.items())),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_done(cls, name: str, rows_in: int, done: dict) -> StageStats:
        """The stats of a global stage from its `_done.json` (seconds, reasons, counters)."""
        stage = cls(name, rows_in=rows_in, seconds=done["seconds"])
        stage.reasons.update(done["reasons"])
        stage.counters.update(done["counters"])
        stage.rows_out = rows_in - stage.rejected
        return stage

    @classmethod
    def from_dict(cls, d: dict) -> StageStats:
        return cls(
            name=d["stage"],
            rows_in=d["rows_in"],
            rows_out=d["rows_out"],
            reasons=Counter(d["reasons"]),
            counters=Counter(d.get("counters", {})),
            seconds=d.get("seconds", 0.0),
        )


def rejected_rows(
    batch: pa.Table,
    stage: str,
    reasons: list[str],
    details: list[str | None],
    caption_chars: int,
    thumbnails: pa.Array | None = None,
) -> pa.Table:
    """Build the `rejected/` rows for `batch` (which holds only the rejected rows).

    `thumbnails` (see `pipeline.thumbnails.gallery_thumbnails`) is null for every row when not given.
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
