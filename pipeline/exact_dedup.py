"""Phase 2: exact duplicates resolved across the whole dataset on Ray Data.

Rows are hash-partitioned by key across the cluster, so all rows sharing a key meet in one block, where
duplicates are found with one vectorised sort. Image duplicates (same sha256) are resolved first, then
caption duplicates (same normalised caption) among the survivors. The survivor of a group is its first
occurrence (smallest id), so the result does not depend on worker count or batch size. Only the losers
(id, part, reason, survivor id) are written, partitioned by part, so finalize reads only its own.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.config import ExactDedupConfig

KEY_COLUMNS = ["id", "part", "sha256", "caption_key"]
LOSER_SCHEMA = pa.schema(
    [("id", pa.string()), ("part", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


def mark_duplicates(block: pa.Table, key: str, reason: str) -> pa.Table:
    """Mark every row whose `key` appeared on a row with a smaller id; attach the survivor's id."""
    block = block.sort_by([(key, "ascending"), ("id", "ascending")])
    n = block.num_rows
    keys = block[key].to_numpy(zero_copy_only=False)
    starts = np.ones(n, dtype=bool)
    starts[1:] = keys[1:] != keys[:-1]
    survivor_idx = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    survivors = pc.take(block["id"], pa.array(survivor_idx, pa.int64())).to_pylist()
    reasons = [None if s else reason for s in starts]
    details = [None if s else f"duplicate of {sid}" for s, sid in zip(starts, survivors, strict=True)]
    return block.append_column("dup_reason", pa.array(reasons, pa.string())).append_column(
        "dup_detail", pa.array(details, pa.string())
    )


def select_rows(batch: pa.Table, losers: bool) -> pa.Table:
    """The marked losers as LOSER_SCHEMA rows, or the survivors without the mark columns."""
    is_loser = pc.is_valid(batch["dup_reason"])
    if not losers:
        return batch.filter(pc.invert(is_loser)).drop_columns(["dup_reason", "dup_detail"])
    lost = batch.filter(is_loser)
    return pa.Table.from_arrays(
        [lost["id"], lost["part"], lost["dup_reason"], lost["dup_detail"]], schema=LOSER_SCHEMA
    )


def resolve_exact_duplicates(
    phase1_files: list[str], out_dir: Path, cfg: ExactDedupConfig, partitions: int
) -> Counter:
    """Find exact-duplicate losers over all phase-1 rows and write them under `out_dir`.

    Returns the number of losers per reason.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    steps = [
        (k, r)
        for k, r, on in [
            ("sha256", "duplicate_image", cfg.image),
            ("caption_key", "duplicate_caption", cfg.caption),
        ]
        if on
    ]
    counts: Counter = Counter()
    if not steps or not phase1_files:
        return counts
    ds = ray.data.read_parquet(phase1_files).select_columns(KEY_COLUMNS)
    for key, reason in steps:
        marked = (
            ds.repartition(partitions, keys=[key])
            .map_batches(
                mark_duplicates,
                fn_kwargs={"key": key, "reason": reason},
                batch_size=None,
                batch_format="pyarrow",
            )
            .materialize()
        )
        losers = marked.map_batches(select_rows, fn_kwargs={"losers": True}, batch_format="pyarrow")
        losers = losers.materialize()
        n = losers.count()
        if n:
            losers.write_parquet(str(out_dir / key), partition_cols=["part"])
        counts[reason] += n
        ds = marked.map_batches(select_rows, fn_kwargs={"losers": False}, batch_format="pyarrow")
    return counts


def losers_of_part(out_dir: Path, part: str) -> pa.Table:
    """The exact-duplicate losers of one part (id, reason, detail)."""
    tables = [
        pq.read_table(f, columns=["id", "reason", "detail"])
        for key_dir in sorted(out_dir.glob("*"))
        for f in sorted((key_dir / f"part={part}").glob("*.parquet"))
    ]
    if not tables:
        return LOSER_SCHEMA.empty_table().drop_columns(["part"])
    return pa.concat_tables(tables)
