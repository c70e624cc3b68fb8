"""Finalize: write the curated shards under data/ and every dropped row under rejected/, per part.

Rows a global stage dropped (exact and near dedup, alignment, diversity) go to rejected/ under that stage;
kept rows get the columns the later phases computed (near-dup cluster and its size, alignment score,
diversity keep probability and score, OCR text, synthetic caption), and their caption the OCR text.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter, ShardedParquetWriter, read_json, write_json
from vlmforge.common.storage import Location, location, parquet_file, read_parquet
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.config import CurateConfig, OutputConfig
from vlmforge.pipeline.engine.executor import cluster_cpus, map_units
from vlmforge.pipeline.engine.survivors import attach, dropped_rows, kept_columns, results_of_part
from vlmforge.pipeline.filter.base import rejected_rows
from vlmforge.pipeline.registry import Context, PhaseResult
from vlmforge.pipeline.report.thumbnails import gallery_thumbnails
from vlmforge.pipeline.schema import OUTPUT_SCHEMA, REJECTED_SCHEMA, conform


def finalize_part(part: str, key: str, cfg: CurateConfig, layout: Layout, out: Location) -> dict:
    """Split one part's phase-1 rows (cache `key`) into data shards and rejected rows named after the input
    part; returns the files written."""
    done_path = layout.dir("finalize") / f"{part}.json"
    if (done := read_json(done_path)) is not None:
        return {**done, "reused": True}
    kept_path, phase1_rejected, _ = layout.phase1(key)
    results = results_of_part(layout, key)
    drops, columns = dropped_rows(results), kept_columns(layout, key, results)
    oc = cfg.output
    gallery: Counter = Counter()  # rejected rows given a thumbnail, per reason, in this part
    rejected_path = out / "rejected" / f"part-{part}.parquet"
    with (
        AtomicParquetWriter(rejected_path, REJECTED_SCHEMA, oc.compression, oc.row_group_rows) as rej,
        ShardedParquetWriter(
            out / "data", f"part-{part}", OUTPUT_SCHEMA, oc.rows_per_shard, oc.compression, oc.row_group_rows
        ) as data,
    ):
        rej.write(read_parquet(phase1_rejected))
        for batch in parquet_file(kept_path).iter_batches(batch_size=oc.row_group_rows):
            table = pa.Table.from_batches([batch])
            idx = pc.index_in(table["id"], value_set=drops["id"])
            gone = pc.is_valid(idx)
            if pc.any(gone).as_py():
                write_dropped(table.filter(gone), drops.take(idx.drop_null()), rej, oc, gallery)
                table = table.filter(pc.invert(gone))
            data.write(conform(training_columns(attach(table, columns), cfg), OUTPUT_SCHEMA))
    result = {
        "part": part,
        "data": data.files,
        "data_rows": data.rows,
        "rejected": rejected_path.name,
        "rejected_rows": rej.rows,
    }
    write_json(done_path, result)
    return {**result, "reused": False}


def write_dropped(
    lost: pa.Table, decisions: pa.Table, rej: AtomicParquetWriter, oc: OutputConfig, gallery: Counter
) -> None:
    """Write the rows the global stages dropped, each with its stage, reason and detail."""
    for stage in pc.unique(decisions["stage"]).to_pylist():
        mine = pc.equal(decisions["stage"], stage)
        rows, why = lost.filter(mine), decisions.filter(mine)
        reasons = why["reason"].to_pylist()
        thumbs = gallery_thumbnails(rows, reasons, gallery, oc.gallery_per_reason)
        rej.write(
            rejected_rows(rows, stage, reasons, why["detail"].to_pylist(), oc.rejected_caption_chars, thumbs)
        )


def training_columns(table: pa.Table, cfg: CurateConfig) -> pa.Table:
    """Fill the columns derived at the end: a row in no near-dup cluster is its own cluster of one, and
    the training caption is the caption followed by the OCR text (`original_caption` stays as it was)."""
    if cfg.near_dedup.enabled:
        cluster = pc.coalesce(table["dup_cluster"], table["id"])
        size = pc.coalesce(table["dup_cluster_size"], pa.scalar(1, pa.int32()))
        for name, col in (("dup_cluster", cluster), ("dup_cluster_size", size)):
            table = table.set_column(table.column_names.index(name), name, col)
    if "ocr_text" in table.column_names:
        joined = pc.binary_join_element_wise(table["caption"], table["ocr_text"], cfg.ocr.separator)
        table = table.set_column(
            table.column_names.index("caption"), "caption", pc.coalesce(joined, table["caption"])
        )
    return table


class FinalizeWorker:
    """Ray Data callable running `finalize_part` over parts."""

    def __init__(self, cfg_json: str, layout_json: str, out: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.layout, self.out = Layout.from_json(layout_json), location(out)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for unit in map(json.loads, batch.column("part").to_pylist()):
            part = unit["part"]
            results.append(finalize_part(part, self.layout.parts[part], self.cfg, self.layout, self.out))
        return pa.table({"result": [json.dumps(r) for r in results]})


def run(ctx: Context) -> PhaseResult:
    """Write every part's data shards and rejected rows; the files written, and their row counts."""
    results = map_units(
        [{"part": p.name} for p in ctx.parts],
        FinalizeWorker,
        {"cfg_json": ctx.cfg.model_dump_json(), "layout_json": ctx.layout.to_json(), "out": ctx.out},
        ctx.cfg.ray.workers or cluster_cpus(),
        ctx.progress,
    )
    files = {
        "data": [f"data/{f}" for r in results for f in r["data"]],
        "rejected": [f"rejected/{r['rejected']}" for r in results],
    }
    rows = {
        "data": sum(r["data_rows"] for r in results),
        "rejected": sum(r["rejected_rows"] for r in results),
    }
    return PhaseResult(
        manifest={"files": files},
        timing={"reused": sum(r["reused"] for r in results)},
        output={"rows": rows},
    )
