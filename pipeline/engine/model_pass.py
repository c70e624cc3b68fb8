"""Model passes over each part's surviving rows: alignment scores (phase 3), OCR text and synthetic captions
(phase 5). The registry declares each pass (its model, the columns it reads and adds); a model is loaded
once per worker; each part's result is written atomically in the pass's cache directory, so a re-run skips
finished parts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from vlmforge.common.files import AtomicParquetWriter, read_json, read_table_or_empty, write_json
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.cache.row_cache import RowCache
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import cluster_cpus, cluster_gpus, map_units
from vlmforge.pipeline.engine.survivors import surviving_batches
from vlmforge.pipeline.registry import BY_NAME, Context, Phase, PhaseResult, global_before
from vlmforge.pipeline.schema import OUTPUT_SCHEMA


def output_schema(phase: Phase) -> pa.Schema:
    """What a pass writes: id and the columns it adds, typed as in the output."""
    return pa.schema([OUTPUT_SCHEMA.field(c) for c in ("id", *phase.adds)])


def annotate_part(part: str, phase: Phase, model: Any, cfg: CurateConfig, layout: Layout) -> dict:
    """Run `model` over the part's surviving rows; write id + its columns; return rows, counters, seconds.

    Rows the pass already saw with this config (in any earlier run, whatever the phases before it decided)
    come from the row cache (`cached` in the counters); only new rows reach the model.
    """
    done_path = layout.dir(phase.name) / f"{part}.json"
    if (done := read_json(done_path)) is not None:
        return {**done, "reused": True}
    start = time.perf_counter()
    before_counts = Counter(getattr(model, "counters", {}))
    schema = output_schema(phase)
    cache, rows = RowCache(layout.row_cache(phase.name, part), schema, "id"), 0
    with AtomicParquetWriter(layout.dir(phase.name) / f"{part}.parquet", schema) as w:
        batches = surviving_batches(
            layout, part, list(phase.model_reads), global_before(phase.name), cfg.ray.batch_rows
        )
        for batch in batches:
            w.write(cache.results(batch, model))
            rows += batch.num_rows
    cache.save()
    counters = Counter(getattr(model, "counters", {}))
    counters.subtract(before_counts)
    counters["cached"] = cache.hits
    result = {"part": part, "rows": rows, "counters": dict(+counters), "seconds": time.perf_counter() - start}
    write_json(done_path, result)
    return {**result, "reused": False}


class AnnotateWorker:
    """Ray Data callable: builds the pass's model once per actor, then annotates whole parts."""

    def __init__(self, cfg_json: str, layout_json: str, kind: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.layout, self.phase = Layout.from_json(layout_json), BY_NAME[kind]
        self.model = self.phase.build_model(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [
            annotate_part(json.loads(p)["part"], self.phase, self.model, self.cfg, self.layout)
            for p in batch.column("part").to_pylist()
        ]
        return pa.table({"result": [json.dumps(r) for r in results]})


def read_annotation(layout: Layout, kind: str, part: str) -> pa.Table:
    """One part's output of a model pass (empty when the part had no surviving rows)."""
    return read_table_or_empty(layout.dir(kind) / f"{part}.parquet", output_schema(BY_NAME[kind]))


def model_workers(configured: int | None, num_gpus: float) -> int:
    """Actors of a model pass: as configured, else one per GPU when models use GPUs, else one per CPU."""
    if configured:
        return configured
    if num_gpus > 0:
        return max(1, int(cluster_gpus() // num_gpus))
    return cluster_cpus()


def run(ctx: Context) -> PhaseResult:
    """The phase's model pass over every part (or its cached summary); a stage that drops nothing."""
    phase, cfg, layout = ctx.phase, ctx.cfg, ctx.layout
    section = getattr(cfg, phase.section)

    def compute() -> dict:
        num_gpus = getattr(section, "num_gpus", 0)
        results = map_units(
            [{"part": p} for p in layout.parts.values()],
            AnnotateWorker,
            {"cfg_json": cfg.model_dump_json(), "layout_json": layout.to_json(), "kind": phase.name},
            model_workers(section.workers, num_gpus),
            ctx.progress,
            num_gpus,
        )
        counters: Counter = Counter()
        for r in results:
            counters.update(r["counters"])
        return {"reasons": {}, "counters": dict(counters)}

    done = layout.run_once(phase.name, compute, ctx.log, phase.title)
    stages = [StageStats.from_done(phase.name, ctx.rows_in, done)] if phase.stage else []
    return PhaseResult(stages=stages)
