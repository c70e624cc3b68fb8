"""Phase 2: exact duplicates resolved across the whole dataset on Ray tasks.

Rows are hash-partitioned by key across the cluster, so all rows sharing a key meet in one task, where
duplicates are found with one vectorised sort. Image duplicates (same sha256) are resolved first, then
caption duplicates (same normalised caption) among the survivors. The survivor of a group is its first
occurrence (smallest id), so the result does not depend on worker count or batch size. Only the losers
(id, reason, survivor id) are written, one file per part, so finalize reads only its own.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.common.storage import Location, location, read_parquet, rmtree
from vlmforge.pipeline.config import ExactDedupConfig
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import cluster_cpus
from vlmforge.pipeline.engine.shuffle import exchange, gather_stats, map_each, persisted, resuming, shuffle
from vlmforge.pipeline.registry import Context, PhaseResult

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


def with_hash(table: pa.Table, key: str) -> pa.Table:
    """`table` with `_h`, an integer of the hex digest in `key`, to partition the rows by."""
    h = np.fromiter((int(k[:15], 16) if k else 0 for k in table[key].to_pylist()), np.int64, table.num_rows)
    table = table.drop_columns([c for c in ["_h"] if c in table.column_names])
    return table.append_column("_h", pa.array(h, pa.int64()))


def read_keys(path: str, key: str) -> pa.Table:
    """The key columns of one phase-1 file, hashed by `key`."""
    return with_hash(read_parquet(path, columns=KEY_COLUMNS), key)


def resolve_partition(table: pa.Table, dup_key: str, reason: str) -> pa.Table:
    """Mark one partition's duplicates on `dup_key` (all its rows, losers with `dup_reason` set)."""
    return mark_duplicates(table, dup_key, reason)


def survivors_of(marked: pa.Table, next_key: str) -> pa.Table:
    """The marked table's survivors, hashed by `next_key` for the next exchange."""
    return with_hash(select_rows(marked, losers=False), next_key)


def losers_of(marked: pa.Table) -> tuple[pa.Table, dict]:
    """The marked table's losers (LOSER_SCHEMA), hashed by part for the exchange that writes them."""
    losers = select_rows(marked, losers=True)
    return with_hash(losers, "part"), {"losers": losers.num_rows}


def write_losers(table: pa.Table, out_dir: str) -> tuple[pa.Table, dict]:
    """Write the losers of each part in this partition to one file per part, `out_dir/{part}.parquet`."""
    schema = LOSER_SCHEMA.remove(LOSER_SCHEMA.get_field_index("part"))
    for part in pc.unique(table["part"]).to_pylist():
        rows = table.filter(pc.equal(table["part"], part)).sort_by("id").select(schema.names)
        with AtomicParquetWriter(location(out_dir) / f"{part}.parquet", schema) as w:
            w.write(rows)
    return table.slice(0, 0), {"parts": pc.count_distinct(table["part"]).as_py()}


def resolve_exact_duplicates(
    phase1_files: list[str], out_dir: Location, cfg: ExactDedupConfig, partitions: int
) -> Counter:
    """Find exact-duplicate losers over all phase-1 rows and write them under `out_dir`, one file per part
    that has any (`losers_of_part` reads them).

    Each step is one hash exchange of the key columns on Ray tasks (`engine.shuffle`); a last exchange by
    part gathers each part's losers of every step. Returns the number of losers per reason.
    """
    if out_dir.exists() and not resuming():  # a rerun keeps what its finished exchanges wrote
        rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    survivors, losers = None, []
    for i, (key, reason) in enumerate(steps):
        args = {"dup_key": key, "reason": reason}
        if survivors is None:
            inputs = [(f, key) for f in phase1_files]
            marked, _ = shuffle(read_keys, inputs, "_h", partitions, resolve_partition, **args)
        else:
            marked, _ = exchange(survivors, "_h", partitions, resolve_partition, **args)
        lost, stats = map_each(marked, losers_of)
        counts[reason] += sum(s["losers"] for s in gather_stats(stats))
        losers += lost
        if i + 1 < len(steps):
            survivors, _ = map_each(marked, survivors_of, next_key=steps[i + 1][0])
    _, written = exchange(losers, "_h", partitions, write_losers, out_dir=str(out_dir))
    gather_stats(written)
    return counts


def losers_of_part(out_dir: Location, part: str) -> pa.Table:
    """The exact-duplicate losers of one part (id, reason, detail)."""
    path = out_dir / f"{part}.parquet"
    if not path.is_file():
        return LOSER_SCHEMA.empty_table().drop_columns(["part"])
    return read_parquet(path, columns=["id", "reason", "detail"])


def run(ctx: Context) -> PhaseResult:
    """Run (or reuse) the exact-duplicate resolution of phase 2; its stats as a stage."""
    layout = ctx.layout

    def compute() -> dict:
        kept_files = [str(layout.phase1(key)[0]) for key in layout.parts.values()]
        partitions = max(2 * cluster_cpus(), ctx.rows_in // 500_000)
        with persisted(layout.exchanges("exact_dedup")):
            counts = resolve_exact_duplicates(
                kept_files, layout.dir("exact_dedup"), ctx.cfg.exact_dedup, partitions
            )
        return {"reasons": dict(counts), "counters": {}}

    reused = layout.done("exact_dedup")
    done = layout.run_once("exact_dedup", compute, ctx.log, ctx.phase.title)
    return PhaseResult(
        stages=[StageStats.from_done("exact_dedup", ctx.rows_in, done)], timing={"reused": reused}
    )
