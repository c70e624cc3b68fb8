"""Model passes over each part's surviving rows in Ray actor pools: alignment scores (phase 3), OCR text and
synthetic captions (enrichment). A model is loaded once per actor; each part's result is written atomically
in the pass's cache directory, so a re-run skips finished parts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CurateConfig
from pipeline.fingerprints import Layout
from pipeline.row_cache import RowCache
from pipeline.survivors import ALIGNMENT, DIVERSITY, EXACT, NEAR, GlobalStage, surviving_batches
from pipeline.writer import AtomicParquetWriter, read_json, write_json


@dataclass(frozen=True)
class Annotation:
    """A model pass: the columns it reads and writes, and the global stages that decide its input rows."""

    kind: str
    reads: tuple[str, ...]
    writes: pa.Schema
    after: tuple[GlobalStage, ...]


ALIGNMENT_SCORES = Annotation(
    "alignment_scores",
    ("id", "image", "caption"),
    pa.schema([("id", pa.string()), ("clip_score", pa.float32())]),
    (EXACT, NEAR),
)
OCR = Annotation(
    "ocr",
    ("id", "image"),
    pa.schema([("id", pa.string()), ("ocr_text", pa.string())]),
    (EXACT, NEAR, ALIGNMENT, DIVERSITY),
)
SYNTHETIC = Annotation(
    "synthetic_caption",
    ("id", "image"),
    pa.schema([("id", pa.string()), ("synthetic_caption", pa.string())]),
    (EXACT, NEAR, ALIGNMENT, DIVERSITY),
)
ANNOTATIONS = {a.kind: a for a in (ALIGNMENT_SCORES, OCR, SYNTHETIC)}


def build_model(kind: str, cfg: CurateConfig) -> Any:
    """The callable of one annotation kind: a pyarrow table (its `reads`) -> a table (its `writes`)."""
    if kind == ALIGNMENT_SCORES.kind:
        from pipeline.stages.alignment import AlignmentScore

        return AlignmentScore(cfg.alignment)
    if kind == OCR.kind:
        from pipeline.stages.ocr import OcrText

        return OcrText(cfg.ocr)
    from pipeline.stages.synthetic_caption import SyntheticCaption

    return SyntheticCaption(cfg.synthetic_caption)


def annotate_part(part: str, ann: Annotation, model: Any, cfg: CurateConfig, layout: Layout) -> dict:
    """Run `model` over the part's surviving rows; write id + its columns; return rows, counters, seconds.

    Rows the pass already saw with this config (in any earlier run, whatever the phases before it decided)
    come from the row cache (`cached` in the counters); only new rows reach the model.
    """
    done_path = layout.dir(ann.kind) / f"{part}.json"
    if (done := read_json(done_path)) is not None:
        return {**done, "reused": True}
    start = time.perf_counter()
    before = Counter(getattr(model, "counters", {}))
    cache, rows = RowCache(layout.row_cache(ann.kind, part), ann.writes, "id"), 0
    with AtomicParquetWriter(layout.dir(ann.kind) / f"{part}.parquet", ann.writes) as w:
        for batch in surviving_batches(layout, part, list(ann.reads), ann.after, cfg.ray.batch_rows):
            w.write(cache.results(batch, model))
            rows += batch.num_rows
    cache.save()
    counters = Counter(getattr(model, "counters", {}))
    counters.subtract(before)
    counters["cached"] = cache.hits
    result = {"part": part, "rows": rows, "counters": dict(+counters), "seconds": time.perf_counter() - start}
    write_json(done_path, result)
    return {**result, "reused": False}


class AnnotateWorker:
    """Ray Data callable: builds the model once per actor, then annotates whole parts."""

    def __init__(self, cfg_json: str, layout_json: str, kind: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.layout, self.ann = Layout.from_json(layout_json), ANNOTATIONS[kind]
        self.model = build_model(kind, self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [
            annotate_part(json.loads(p)["part"], self.ann, self.model, self.cfg, self.layout)
            for p in batch.column("part").to_pylist()
        ]
        return pa.table({"result": [json.dumps(r) for r in results]})


def read_annotation(layout: Layout, kind: str, part: str) -> pa.Table:
    """One part's output of an annotation pass (empty when the part had no surviving rows)."""
    path = layout.dir(kind) / f"{part}.parquet"
    return pq.read_table(path) if path.is_file() else ANNOTATIONS[kind].writes.empty_table()
