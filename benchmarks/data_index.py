"""Build time and memory of the training data index, per million rows: the per-row index main had (every id
to a Python list, ``is_heldout`` per id, int64 row numbers kept) against ``training.index`` (ids hashed a row
group at a time with NumPy, one bit a row kept).

Writes ``--rows`` synthetic rows (id and clip_score only, the columns the index reads) in ``--shards``
shards of ``--row-group`` rows, then builds the train split with and without a subset. Time is the
fastest of ``--repeat`` builds; peak is tracemalloc's over a whole build (Python objects and NumPy arrays;
Arrow's read buffers, one row group or one column, are not counted); kept is what the index holds after.

The new index's peak is set by the row group size (one row group's ids hashed at once) plus, for a subset,
the score column (8 B a row); the old one's grows with the ids of the whole curated set.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_index.py --rows 2000000 --shards 8
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.training.config import SourceSection, SubsetSection
from vlmforge.training.data import quotas, slot_rows
from vlmforge.training.index import ShardIndex, build_index, build_mix_index, is_heldout


def per_row_index(curated: Path, fraction: float, subset: SubsetSection | None) -> list[np.ndarray]:
    """main's algorithm before the compact index (the baseline): selected int64 row numbers per shard."""
    ids, scores = [], []
    for path in sorted((curated / "data").glob("*.parquet")):
        columns = ["id"] + ([subset.column] if subset else [])
        table = pq.ParquetFile(path).read(columns=columns)
        ids.append(table.column("id").to_pylist())
        if subset:
            scores.append(table.column(subset.column).to_numpy(zero_copy_only=False).astype(np.float64))
    keep = [[i for i, x in enumerate(s) if not is_heldout(x, fraction)] for s in ids]
    rows = [np.array(k, dtype=np.int64) for k in keep]
    if subset:
        every = np.concatenate(scores)
        threshold = float(np.percentile(every[~np.isnan(every)], subset.percentile))
        rows = [r[s[r] >= threshold] for r, s in zip(rows, scores, strict=True)]
    return rows


def whole_epoch_slice(index: ShardIndex, seed: int, slot: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """main's reader slice of a mix (the baseline): the whole epoch in stream order, then the slice."""
    quota = quotas(index.total, index.weights)
    shards, rows, due = [], [], []
    for src, want in enumerate(quota):
        mine = np.array([k for k, s in enumerate(index.file_source) if s == src], dtype=np.int64)
        have, lap = 0, 0
        while have < want:
            for k in np.random.default_rng([seed, 0, src, lap]).permutation(mine):
                r = index.rows_of(k, 0, want - have)
                shards.append(np.full(len(r), k, dtype=np.int64))
                rows.append(r)
                have += len(r)
            lap += 1
        due.append((np.arange(want) + 0.5) / max(want, 1))
    order = np.lexsort((np.repeat(np.arange(len(quota)), quota), np.concatenate(due)))
    start, end = slot * index.total // slots, (slot + 1) * index.total // slots
    return np.concatenate(shards)[order][start:end], np.concatenate(rows)[order][start:end]


def write(out: Path, rows: int, shards: int, row_group: int) -> None:
    (out / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = -(-rows // shards)
    for s in range(shards):
        ids = pa.array([f"{i:012d}" for i in range(s * per, min((s + 1) * per, rows))])
        scores = pa.array(rng.random(len(ids), dtype=np.float32))
        table = pa.table({"id": ids, "clip_score": scores})
        pq.write_table(table, out / "data" / f"part-{s:05d}.parquet", row_group_size=row_group)


def measure(build: Any, repeat: int) -> tuple[float, int, Any]:
    """(fastest wall time of `repeat` builds, tracemalloc peak of one more, its result)."""
    walls = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        build()
        walls.append(time.perf_counter() - start)
    wall = min(walls)
    gc.collect()
    tracemalloc.start()
    result = build()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return wall, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--row-group", type=int, default=65536)
    parser.add_argument("--heldout-fraction", type=float, default=0.05)
    parser.add_argument("--readers", type=int, default=64, help="readers a mix's epoch is cut among")
    parser.add_argument("--repeat", type=int, default=3, help="timed builds each (the fastest is kept)")
    args = parser.parse_args()
    mib, per_m = 2**20, 1e6 / args.rows
    with tempfile.TemporaryDirectory() as tmp:
        curated = Path(tmp)
        write(curated, args.rows, args.shards, args.row_group)
        print(f"{args.rows:,} rows, {args.shards} shards, row groups of {args.row_group:,}; per 1M rows:")
        fraction, repeat = args.heldout_fraction, args.repeat
        for subset in (None, SubsetSection(column="clip_score", percentile=50)):
            old_wall, old_peak, old = measure(lambda s=subset: per_row_index(curated, fraction, s), repeat)
            new = lambda s=subset: build_index(curated, "train", fraction, s)  # noqa: E731
            new_wall, new_peak, new = measure(new, repeat)
            assert all(np.array_equal(a, b) for a, b in zip(old, new.rows, strict=True)), "indexes differ"
            old_kept = sum(r.nbytes for r in old)
            print(
                f"  {'subset p50' if subset else 'held-out only'} ({new.total:,} rows kept): "
                f"build {old_wall * per_m:.2f} s -> {new_wall * per_m:.2f} s "
                f"(new/old {new_wall / old_wall:.2f}); peak (whole build) {old_peak / mib:.1f} -> "
                f"{new_peak / mib:.1f} MiB (x{old_peak / new_peak:.1f} less); kept "
                f"{old_kept / mib * per_m:.2f} -> {new.nbytes / mib * per_m:.3f} MiB "
                f"(x{old_kept / new.nbytes:.0f} less)"
            )
        # a 2-source mix (the same shards twice, weights 3:1): one reader's slice of epoch 0
        sources = [SourceSection(path=str(curated), weight=w, name=f"s{w:g}") for w in (3.0, 1.0)]
        mix = build_mix_index(sources, "train", fraction)
        slot, n = args.readers // 2, args.readers
        old_wall, old_peak, old = measure(lambda: whole_epoch_slice(mix, 0, slot, n), repeat)
        new_wall, new_peak, new = measure(lambda: slot_rows(mix, 0, 0, slot, n), repeat)
        assert all(np.array_equal(a, b) for a, b in zip(old, new, strict=True)), "slices differ"
        print(
            f"  a reader's slice of a 2-source mix ({mix.total:,} rows, 1/{n}): {old_wall:.2f} s -> "
            f"{new_wall:.3f} s; peak {old_peak / mib:.1f} -> {new_peak / mib:.2f} MiB (whole run, not per 1M)"
        )


if __name__ == "__main__":
    main()
