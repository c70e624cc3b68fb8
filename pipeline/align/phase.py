"""Phase 3's filter: the alignment scores of every surviving pair (the `alignment_scores` model pass) are
histogrammed into a global threshold (absolute, or a percentile of all scores), then each part's rows below
it are dropped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vlmforge.common.files import AtomicParquetWriter, read_json
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.config import AlignmentConfig
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import cluster_cpus, get, put
from vlmforge.pipeline.engine.model_pass import read_annotation
from vlmforge.pipeline.engine.shuffle import exchange, gather_stats, map_each
from vlmforge.pipeline.registry import Context, PhaseResult

HIST_BINS = 4000  # fixed bins over [-1, 1], so histograms of different parts add up
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


def score_histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of the non-null scores in HIST_BINS equal bins over [-1, 1] (int64; add parts up)."""
    values = np.asarray(scores, dtype=np.float64)
    values = np.clip(values[~np.isnan(values)], -1.0, 1.0)
    return np.histogram(values, bins=HIST_BINS, range=(-1.0, 1.0))[0].astype(np.int64)


def threshold_from(cfg: AlignmentConfig, hist: np.ndarray) -> float | None:
    """Rows scoring below this are dropped: `cfg.min_score`, or the `cfg.drop_percentile`-th percentile of
    the summed histogram (linear within its bin), or None when neither is set or nothing was scored."""
    if cfg.min_score is not None:
        return cfg.min_score
    total = int(hist.sum())
    if cfg.drop_percentile is None or total == 0:
        return None
    target = cfg.drop_percentile / 100 * total
    cumulative = np.cumsum(hist)
    b = int(np.searchsorted(cumulative, target, side="left"))
    before = cumulative[b - 1] if b > 0 else 0
    width = 2.0 / HIST_BINS
    inside = (target - before) / hist[b] if hist[b] else 0.0
    return float(-1.0 + (b + inside) * width)


def part_histogram(layout_json: str, part: str) -> pa.Table:
    """One part's score histogram as its non-empty bins (bin, count), to be summed by bin across parts."""
    scores = read_annotation(Layout.from_json(layout_json), "alignment_scores", part)["clip_score"]
    hist = score_histogram(scores.drop_null().to_numpy())
    bins = np.flatnonzero(hist)
    return pa.table({"bin": pa.array(bins, pa.int64()), "count": pa.array(hist[bins], pa.int64())})


def sum_bins(table: pa.Table) -> pa.Table:
    return table.group_by("bin").aggregate([("count", "sum")]).rename_columns(["bin", "count"])


def filter_part(layout_json: str, part: str, threshold: float | None) -> tuple[pa.Table, dict]:
    layout = Layout.from_json(layout_json)
    scores = read_annotation(layout, "alignment_scores", part)
    return pa.table({}), {"dropped": write_alignment_results(layout, part, scores, threshold)}


def run(ctx: Context) -> PhaseResult:
    """Drop the pairs below the absolute threshold or the global percentile; its stats and the threshold.

    Each part's histogram is made where the part is read and the histograms are summed by bin in an
    exchange, so the driver holds one histogram, not the scores."""
    layout, ac, parts = ctx.layout, ctx.cfg.alignment, list(ctx.layout.parts.values())

    def compute() -> dict:
        # the scoring pass's counters are the stage's
        counters = (read_json(layout.dir("alignment_scores") / "_done.json") or {}).get("counters", {})
        layout_ref = put(layout.to_json())  # once, not once per task
        hist = np.zeros(HIST_BINS, np.int64)
        if parts:
            bins, _ = map_each([(layout_ref, p) for p in parts], part_histogram)
            summed, _ = exchange(bins, "bin", max(1, min(len(parts), cluster_cpus())), sum_bins)
            for table in get(summed):
                hist[table["bin"].to_numpy()] += table["count"].to_numpy()
        threshold = threshold_from(ac, hist) if parts else None
        _, stats = map_each([(layout_ref, p, threshold) for p in parts], filter_part)
        dropped = sum(s["dropped"] for s in gather_stats(stats))
        reasons = {"low_alignment": dropped} if dropped else {}
        return {"threshold": threshold, "reasons": reasons, "counters": counters}

    done = layout.run_once("alignment", compute, ctx.log, ctx.phase.title)
    return PhaseResult(
        stages=[StageStats.from_done("alignment", ctx.rows_in, done)],
        manifest={"alignment": {"threshold": done["threshold"]}},
    )
