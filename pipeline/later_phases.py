"""Phases 3 to 5 of the curation job, each over the rows the phases before it kept:
alignment scores and their filter (phase 3), diversity resampling (phase 4), OCR text and synthetic captions
(phase 5, enrichment, run last so the models see only rows that will be written).

Each returns its stage's stats for the accounting and leaves per-part results in its cache directory (see
`pipeline.survivors`); a finished phase writes `_done.json` and is reused by any run with its fingerprint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial

import numpy as np
import pyarrow as pa

from pipeline.annotate import ALIGNMENT_SCORES, ANNOTATIONS, AnnotateWorker, read_annotation
from pipeline.config import CurateConfig
from pipeline.fingerprints import Layout
from pipeline.ray_runner import map_units
from pipeline.stages.base import StageStats
from pipeline.survivors import ALIGNMENT, EXACT, NEAR, surviving_rows
from pipeline.writer import AtomicParquetWriter

ALIGNMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("clip_score", pa.float32()), ("reason", pa.string()), ("detail", pa.string())]
)


def run_annotation(
    kind: str,
    cfg: CurateConfig,
    layout: Layout,
    parts: list[str],
    num_gpus: float,
    workers: int,
    progress: bool,
) -> Counter:
    """Run one annotation pass over every part; its merged counters."""
    results = map_units(
        [{"part": p} for p in parts],
        AnnotateWorker,
        {"cfg_json": cfg.model_dump_json(), "layout_json": layout.to_json(), "kind": kind},
        workers,
        progress,
        num_gpus,
    )
    counters: Counter = Counter()
    for r in results:
        counters.update(r["counters"])
    return counters


def model_workers(configured: int | None, num_gpus: float, cpus: int) -> int:
    """Actors of a model pass: as configured, else one per GPU when models use GPUs, else one per CPU."""
    if configured:
        return configured
    if num_gpus > 0:
        import ray

        return max(1, int(ray.cluster_resources().get("GPU", 0) // num_gpus))
    return cpus


def alignment_phase(
    cfg: CurateConfig,
    layout: Layout,
    parts: list[str],
    rows_in: int,
    cpus: int,
    progress: bool,
    log: Callable,
) -> tuple[StageStats, dict]:
    """Score every surviving pair, then drop those below the absolute threshold or the global percentile;
    its stats and the threshold applied."""
    from pipeline.stages.alignment import score_histogram, threshold_from

    ac = cfg.alignment

    def compute() -> dict:
        workers = model_workers(ac.workers, ac.num_gpus, cpus)
        kind = ALIGNMENT_SCORES.kind
        counters = run_annotation(kind, cfg, layout, parts, ac.num_gpus, workers, progress)
        scores = {p: read_annotation(layout, ALIGNMENT_SCORES.kind, p) for p in parts}
        hist = sum(score_histogram(t["clip_score"].drop_null().to_numpy()) for t in scores.values())
        threshold = threshold_from(ac, hist) if parts else None
        dropped = sum(write_alignment_results(layout, p, t, threshold) for p, t in scores.items())
        reasons = {"low_alignment": dropped} if dropped else {}
        return {"threshold": threshold, "reasons": reasons, "counters": dict(counters)}

    done = layout.run_once("alignment", compute, log, "phase 3: image-text alignment")
    return StageStats.from_done("alignment", rows_in, done), {"threshold": done["threshold"]}


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


def diversity_phase(
    cfg: CurateConfig, layout: Layout, parts: list[str], rows_in: int, cpus: int, log: Callable
) -> tuple[StageStats, dict]:
    """Phase 4: n-gram frequency resampling over the captions that are still in; its stats and summary."""
    from pipeline.diversity import resolve_diversity

    def compute() -> dict:
        stages = (EXACT, NEAR, ALIGNMENT)
        load = partial(surviving_rows, layout.to_json(), columns=["id", "caption"], stages=stages)
        return resolve_diversity(parts, load, layout.dir("diversity"), cfg.diversity, cpus)

    done = layout.run_once("diversity", compute, log, "phase 4: diversity resampling")
    return StageStats.from_done("diversity", rows_in, done), report_stats(done)


def report_stats(done: dict) -> dict:
    """The diversity summary for the manifest: n-gram statistics before/after, and the top n-grams with
    their share of captions on each side (the shape `vlmforge stats --html` draws)."""
    stats, counters = done.get("stats") or {}, done.get("counters") or {}
    if not stats:
        return {}
    rows, kept = max(counters.get("rows", 0), 1), max(counters.get("kept", 0), 1)
    top = stats.get("top_ngrams", [])
    after = sorted(top, key=lambda g: -g["after"])
    return {
        "before": stats["before"],
        "after": stats["after"],
        "top_ngrams": {
            "before": [[g["ngram"], g["before"] / rows] for g in top],
            "after": [[g["ngram"], g["after"] / kept] for g in after],
        },
    }


def enrichment_phase(
    kind: str, cfg: CurateConfig, layout: Layout, parts: list[str], rows_in: int, cpus: int, progress: bool,
    log: Callable,
) -> StageStats:  # fmt: skip
    """Phase 5: one enrichment (OCR or synthetic captions) over the rows that will be written."""
    section = cfg.ocr if kind == "ocr" else cfg.synthetic_caption

    def compute() -> dict:
        num_gpus = getattr(section, "num_gpus", 0)
        workers = model_workers(section.workers, num_gpus, cpus)
        counters = run_annotation(ANNOTATIONS[kind].kind, cfg, layout, parts, num_gpus, workers, progress)
        return {"reasons": {}, "counters": dict(counters)}

    done = layout.run_once(kind, compute, log, f"phase 5: {kind.replace('_', ' ')}")
    return StageStats.from_done(kind, rows_in, done)
