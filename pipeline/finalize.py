"""Phase 5: write the curated shards under data/ and every dropped row under rejected/, per part."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import CurateConfig
from pipeline.exact_dedup import losers_of_part
from pipeline.phase1 import part_paths
from pipeline.schema import OUTPUT_SCHEMA, REJECTED_SCHEMA, conform
from pipeline.stages.base import rejected_rows
from pipeline.writer import AtomicParquetWriter, ShardedParquetWriter, read_json, write_json


def finalize_part(part: str, cfg: CurateConfig, work: Path, out: Path) -> dict:
    """Split one part's phase-1 rows into data shards and rejected rows; returns the files written."""
    done_path = work / "finalize" / f"{part}.json"
    if (done := read_json(done_path)) is not None:
        return {**done, "reused": True}
    kept_path, phase1_rejected, _ = part_paths(work, part)
    losers = losers_of_part(work / "phase2", part)
    loser_ids = losers["id"]
    oc = cfg.output
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
                rej.write(
                    rejected_rows(
                        gone,
                        "exact_dedup",
                        pc.take(losers["reason"], idx).to_pylist(),
                        pc.take(losers["detail"], idx).to_pylist(),
                        oc.rejected_caption_chars,
                    )
                )
            data.write(conform(table.filter(pc.invert(dropped)), OUTPUT_SCHEMA))
    result = {
        "part": part,
        "data": data.files,
        "data_rows": data.rows,
        "rejected": rejected_path.name,
        "rejected_rows": rej.rows,
    }
    write_json(done_path, result)
    return {**result, "reused": False}


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
