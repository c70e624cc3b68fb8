"""Phase 2 for video, near duplicates: clips whose sampled frames look alike once aligned in time (a clip
re-encoded, resized, or trimmed by a second or two).

Each exact-dedup survivor is the sequence of its sampled frames' 64-bit pHashes (phase 1). Candidates: two
clips sharing a bit-sampling LSH band key of any of their frames (the image pHash bands). Verification: the
second clip is slid against the first by up to `max_shift_s` (in sampled frames); at each offset where at
least `min_overlap` of the shorter clip's frames overlap, the median Hamming distance of the aligned frames
is taken; the pair matches when the best is at most `max_distance` bits. Matches form a graph whose
connected components keep one clip each: the longest, then the largest, then the smallest id. The others
are dropped as `near_duplicate_video`, naming the survivor; every live clip gets its cluster and its size.

Runs as the image phase does (`vlmforge.pipeline.dedup.near`), on Ray tasks over the phase-1 parts, clips
named by node ids: map tasks emit each clip's distinct (band key, node) rows, shuffled by key; each bucket
partition yields candidate pairs; the pairs are exchanged by their `lo` clip's part (which reads its pHash
sequence) then by their `hi` clip's part (which reads the other and verifies). The verified edges go
through the image phase's components and survivor choice; a last task per part group adds the clips
without a match (their own cluster, size 1). The driver holds only object references and counts.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter, read_table_or_empty
from vlmforge.common.storage import Location, location, rmtree
from vlmforge.pipeline.config import VideoConfig
from vlmforge.pipeline.dedup.components import unique_pairs
from vlmforge.pipeline.dedup.near import (
    RESULT_SCHEMA,
    VIDEO,
    Part,
    bucket_candidates,
    choose_survivors,
    exchange_partitions,
    groups_of,
    label_members,
    live_rows,
    values_of,
    with_low_values,
    with_rule_columns,
    write_results,
)
from vlmforge.pipeline.dedup.phash import band_keys, hamming
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import put
from vlmforge.pipeline.engine.shuffle import (
    column,
    exchange,
    gather_stats,
    map_each,
    persisted,
    resuming,
    shuffle,
)
from vlmforge.pipeline.registry import Context, PhaseResult

BUCKET_WINDOW = 64
PHASHES = "frame_phashes"
RULE = [("duration", "descending"), ("area", "descending"), ("id", "ascending")]


def aligned_distance(
    a: np.ndarray, b: np.ndarray, max_shift: int, min_overlap: float
) -> tuple[int, int] | None:
    """(median Hamming distance, shift) of the best time alignment of pHash sequences `a` and `b` (frame i of
    `a` against frame i + shift of `b`), over shifts where enough frames overlap; None when none does."""
    need = max(1, math.ceil(min_overlap * min(len(a), len(b))))
    best: tuple[int, int] | None = None
    for shift in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -shift), min(len(a), len(b) - shift)
        if hi - lo < need:
            continue
        d = int(np.median(hamming(a[lo:hi], b[lo + shift : hi + shift])))
        if best is None or (d, abs(shift)) < (best[0], abs(best[1])):
            best = (d, shift)
    return best


def clip_band_rows(parts: list[Part], exact_dir: str, bands: int, bits: int, seed: int) -> pa.Table:
    """(key, node) once for every band key of any sampled frame of every live clip (a clip's frames often
    share keys among themselves)."""
    keys, nodes = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    for part in parts:
        table, ids = live_rows(part, exact_dir, [PHASHES])
        if PHASHES not in table.column_names or not table.num_rows:
            continue
        seqs = table[PHASHES].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(seqs), 0).to_numpy(zero_copy_only=False)
        hashes = pc.list_flatten(seqs).to_numpy(zero_copy_only=False).astype(np.uint64)
        owner = np.repeat(np.repeat(ids, lengths), bands)
        key, node = unique_pairs(band_keys(hashes, bands, bits, seed).reshape(-1), owner)
        keys.append(key)
        nodes.append(node)
    return pa.table({"key": np.concatenate(keys), "node": np.concatenate(nodes)})


def sequences(col: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The pHash sequences of a list column as uint64 views (a null sequence is empty)."""
    col = pc.fill_null(col, pa.scalar([], col.type))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


def verified_clip_edges(
    table: pa.Table, paths: dict[int, str], max_shift: int, min_overlap: float, max_distance: int
) -> tuple[pa.Table, dict]:
    """The candidate pairs whose pHash sequences match once aligned (`aligned_distance`)."""
    hi, lo = column(table, "hi"), column(table, "lo")
    seq_hi, seq_lo = sequences(values_of(hi, paths, PHASHES)), sequences(table["lo_value"])
    best = [aligned_distance(a, b, max_shift, min_overlap) for a, b in zip(seq_hi, seq_lo, strict=True)]
    keep = np.array([d is not None and d[0] <= max_distance for d in best], bool).reshape(-1)
    out = pa.table({"hi": hi[keep], "lo": lo[keep], "kind": np.full(keep.sum(), VIDEO, np.int8)})
    return out, {"candidates": len(hi), "edges": out.num_rows}


def choose_clip_survivors(table: pa.Table, names: list[str]) -> tuple[pa.Table, dict]:
    """`choose_survivors` by duration, then frame area (a missing value counts as 0), then id."""
    width, height = (column(table, f"r_{c}").astype(np.float64) for c in ("width", "height"))
    duration = np.nan_to_num(column(table, "r_duration_s").astype(np.float64))
    table = table.append_column("r_duration", pa.array(duration)).append_column(
        "r_area", pa.array(np.nan_to_num(width * height))
    )
    return choose_survivors(table, RULE, names)


def add_unmatched(parts: list[Part], exact_dir: str, out_dir: str) -> pa.Table:
    """Complete each part's results with its live clips that matched none: their own cluster, size 1."""
    for part in parts:
        live, _ = live_rows(part, exact_dir, [])
        if not live.num_rows:
            continue
        path = location(out_dir) / f"{part.name}.parquet"
        members = read_table_or_empty(path, RESULT_SCHEMA)
        alone = live.filter(pc.invert(pc.is_in(live["id"], value_set=members["id"])))["id"]
        nulls = pa.nulls(len(alone), pa.string())
        size = pa.array(np.ones(len(alone), np.int32))
        single = pa.table([alone, nulls, nulls, alone, size], schema=RESULT_SCHEMA)
        with AtomicParquetWriter(path, RESULT_SCHEMA) as w:
            w.write(pa.concat_tables([members, single]).sort_by("id"))
    return pa.table({"parts": [len(parts)]})


def resolve_video_duplicates(
    parts: list[Part],
    exact_dir: Location,
    out_dir: Location,
    cfg: VideoConfig,
    partitions: int,
    local_max_edges: int,
) -> dict:
    """Find near-duplicate clips among the exact-dedup survivors of `parts`; write each part's results
    (RESULT_SCHEMA) under `out_dir`. Returns counts per reason and counters."""
    if out_dir.exists() and not resuming():  # a rerun keeps what its finished exchanges wrote
        rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not parts:
        return {"reasons": {}, "counters": {}}
    nd = cfg.near_dedup
    groups = [(g, str(exact_dir)) for g in groups_of(parts, 2 * partitions)]
    paths = put({p.index: p.path for p in parts})  # once, not once per task
    cand, _ = shuffle(
        clip_band_rows, [(*g, nd.bands, nd.band_bits, nd.seed) for g in groups], "key", partitions,
        bucket_candidates, window=BUCKET_WINDOW,
    )  # fmt: skip
    with_lo, _ = exchange(cand, "part_lo", partitions, with_low_values, paths=paths, name=PHASHES)
    edge_refs, verify_stats = exchange(
        with_lo, "part_hi", partitions, verified_clip_edges, paths=paths,
        max_shift=round(nd.max_shift_s * cfg.fps), min_overlap=nd.min_overlap, max_distance=nd.max_distance,
    )  # fmt: skip
    verified = gather_stats(verify_stats)
    counters = {"candidates": sum(s["candidates"] for s in verified)}
    counters["edges"] = sum(s["edges"] for s in verified)
    members, cc = label_members(edge_refs, counters["edges"], local_max_edges, partitions)
    del edge_refs
    columns = ["id", "duration_s", "width", "height"]
    fetched, _ = exchange(members, "part", partitions, with_rule_columns, paths=paths, columns=columns)
    names = [p.name for p in parts]
    results, stats = exchange(fetched, "comp", partitions, choose_clip_survivors, names=names)
    _, written = exchange(results, "part_index", partitions, write_results, out_dir=str(out_dir))
    gather_stats(written)
    _, added = map_each([(*g, str(out_dir)) for g in groups], add_unmatched)
    gather_stats(added)  # after every member file is written
    reasons: Counter = Counter()
    counters["components"] = 0
    for s in gather_stats(stats):
        reasons.update(s["reasons"])
        counters["components"] += s["components"]
    return {"reasons": dict(reasons), "counters": {**counters, **cc}}


def run(ctx: Context) -> PhaseResult:
    """Run (or reuse) the near-duplicate clip resolution; its stats as a stage."""
    layout = ctx.layout
    name = ctx.phase.name

    def compute() -> dict:
        parts = [Part(i, key, str(layout.phase1(key)[0])) for i, key in enumerate(layout.parts.values())]
        video = ctx.cfg.video
        band_rows = ctx.rows_in * video.max_frames * video.near_dedup.bands
        partitions = exchange_partitions(band_rows, ctx.cfg.ray.workers)
        with persisted(layout.exchanges(name)):
            return resolve_video_duplicates(
                parts, layout.dir("exact_dedup"), layout.dir(name), video, partitions,
                ctx.cfg.near_dedup.local_max_edges,  # the image phase's bound: both paths label alike
            )  # fmt: skip

    reused = layout.done(name)
    done = layout.run_once(name, compute, ctx.log, ctx.phase.title)
    return PhaseResult(stages=[StageStats.from_done(name, ctx.rows_in, done)], timing={"reused": reused})
