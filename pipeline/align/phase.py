"""Phase 3's filter: the alignment scores of every surviving pair (the `alignment_scores` model pass) are
histogrammed into a global threshold (absolute, or a percentile of all scores), then each part's rows below
it are dropped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vlmforge.common.files import AtomicParquetWriter, read_json
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.model_pass import read_annotation
from vlmforge.pipeline.registry import Context, PhaseResult

ALIGNMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("clip_score", pa.float32()), ("reason", pa.string()), ("detail", pa.string())]
)


def write_alignment_results(layout: Layout, part: str, scores: pa.Table, threshold: float | None) -> int:
    """Write one part's alignment results (a row below `threshold` is dropped); the rows dropped."""
    score = scores["clip_score"].to_numpy(zero_copy_only=False)  # null -> nan, which is never below
    low = score < threshold if threshold is not None else np.zeros(len(score), bool)
    reason = pa.array(np.where(low, "low_alignment", None), pa.string())
    detail = np.full(len(score), None, object)
    detail[low] = [f"score {s:.3f} < {threshold:.3f}" for s in score[low]]
    with AtomicParquetWriter(layout.dir("alignment") / f"{part}.parquet", ALIGNMENT_SCHEMA) as w:
        w.write(pa.table([scores["id"], scores["clip_score"], reason, pa.array(detail, pa.string())],
                         schema=ALIGNMENT_SCHEMA))  # fmt: skip
    return int(low.sum())


def run(ctx: Context) -> PhaseResult:
    """Drop the pairs below the absolute threshold or the global percentile; its stats and the threshold."""
    from vlmforge.pipeline.align.scorer import score_histogram, threshold_from

    layout, ac, parts = ctx.layout, ctx.cfg.alignment, list(ctx.layout.parts.values())

    def compute() -> dict:
        # the scoring pass's counters are the stage's
        counters = (read_json(layout.dir("alignment_scores") / "_done.json") or {}).get("counters", {})
        scores = {p: read_annotation(layout, "alignment_scores", p) for p in parts}
        hist = sum(score_histogram(t["clip_score"].drop_null().to_numpy()) for t in scores.values())
        threshold = threshold_from(ac, hist) if parts else None
        dropped = sum(write_alignment_results(layout, p, t, threshold) for p, t in scores.items())
        reasons = {"low_alignment": dropped} if dropped else {}
        return {"threshold": threshold, "reasons": reasons, "counters": counters}

    done = layout.run_once("alignment", compute, ctx.log, ctx.phase.title)
    return PhaseResult(
        stages=[StageStats.from_done("alignment", ctx.rows_in, done)],
        manifest={"alignment": {"threshold": done["threshold"]}},
    )
