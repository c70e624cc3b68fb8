"""Phase 5: write the curated shards under data/ and every dropped row under rejected/, per part.

Exact-duplicate losers are dropped with stage `exact_dedup`, near-duplicate losers with stage `near_dedup`;
with near dedup on, every kept row records its near-duplicate cluster (the survivor's id) and its size.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import CurateConfig
from pipeline.exact_dedup import losers_of_part
from pipeline.near_dedup import results_of_part
from pipeline.phase1 import part_paths
from pipeline.schema import OUTPUT_SCHEMA, REJECTED_SCHEMA, conform
from pipeline.stages.base import rejected_rows
from pipeline.thumbnails import gallery_thumbnails
from pipeline.writer import AtomicParquetWriter, ShardedParquetWriter, read_json, write_json


def finalize_part(part: str, cfg: CurateConfig, work: Path, out: Path) -> dict:
    """Split one part's phase-1 rows into data shards and rejected rows; returns the files written."""
    done_path = work / "finalize" / f"{part}.json"
    if (done := read_json(done_path)) is not None:
        return {**done, "reused": True}
    kept_path, phase1_rejected, _ = part_paths(work, part)
    losers = losers_of_part(work / "phase2", part)
    loser_ids = losers["id"]
    near = results_of_part(work / "near_dedup", part)
    oc = cfg.output
    gallery: Counter = Counter()  # rejected rows given a thumbnail, per reason, in this part
    rejected_path = out / "rejected" / f"part-{part}.parquet"
    with (
        AtomicParquetWriter(rejected_path, REJECTED_SCHEMA, oc.compression, oc.row_group_rows) as rej,
        ShardedParquetWriter(
            out / "data", f"part-{part}", OUTPUT_SCHEMA, oc.rows_per_shard, oc.compression, oc.row_group_rows
        ) as data,
    ):
        rej.write(pq.read_table(phase1_rejected))
        for batch in pq.ParquetFile(kept_path).iter_batches(batch_size=oc.row_group_rows):
            table = pa.Table.from_batches([batch])
            dropped = pc.is_in(table["id"], value_set=loser_ids)
            gone = table.filter(dropped)
            if gone.num_rows:
                idx = pc.index_in(gone["id"], value_set=loser_ids)
                reasons = pc.take(losers["reason"], idx).to_pylist()
                rej.write(
                    rejected_rows(
                        gone,
                        "exact_dedup",
                        reasons,
                        pc.take(losers["detail"], idx).to_pylist(),
                        oc.rejected_caption_chars,
                        gallery_thumbnails(gone, reasons, gallery, oc.gallery_per_reason),
                    )
                )
            table = table.filter(pc.invert(dropped))
            if cfg.near_dedup.enabled:
                table = drop_near_duplicates(
                    table, near, rej, oc.rejected_caption_chars, gallery, oc.gallery_per_reason
                )
            data.write(conform(table, OUTPUT_SCHEMA))
    result = {
        "part": part,
        "data": data.files,
        "data_rows": data.rows,
        "rejected": rejected_path.name,
        "rejected_rows": rej.rows,
    }
    write_json(done_path, result)
    return {**result, "reused": False}


def drop_near_duplicates(
    table: pa.Table,
    near: pa.Table,
    rej: AtomicParquetWriter,
    caption_chars: int,
    gallery: Counter,
    per_reason: int,
) -> pa.Table:
    """Write the near-dup losers of `table` to `rej`; return the rest with `dup_cluster` and its size (a row
    in no cluster is its own cluster of one)."""
    idx = pc.index_in(table["id"], value_set=near["id"])
    reason = pc.take(near["reason"], idx)
    gone = pc.is_valid(reason)
    if pc.any(gone).as_py():
        lost = table.filter(gone)
        reasons = reason.filter(gone).to_pylist()
        rej.write(
            rejected_rows(
                lost,
                "near_dedup",
                reasons,
                pc.take(near["detail"], idx).filter(gone).to_pylist(),
                caption_chars,
                gallery_thumbnails(lost, reasons, gallery, per_reason),
            )
        )
    keep = pc.invert(pc.fill_null(gone, False))
    table, idx = table.filter(keep), idx.filter(keep)
    cluster = pc.coalesce(pc.take(near["dup_cluster"], idx), table["id"])
    size = pc.coalesce(pc.take(near["dup_cluster_size"], idx), pa.scalar(1, pa.int32()))
    for name, col in (("dup_cluster", cluster), ("dup_cluster_size", size)):
        table = table.set_column(table.column_names.index(name), name, col)
    return table


class FinalizeWorker:
    """Ray Data callable running `finalize_part` over parts."""

    def __init__(self, cfg_json: str, work: str, out: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.work, self.out = Path(work), Path(out)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [
            finalize_part(json.loads(p)["part"], self.cfg, self.work, self.out)
            for p in batch.column("part").to_pylist()
        ]
        return pa.table({"result": [json.dumps(r) for r in results]})
