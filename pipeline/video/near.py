"""Phase 2 for video, near duplicates: clips whose sampled frames look alike once aligned in time (a clip
re-encoded, resized, or trimmed by a second or two).

Each exact-dedup survivor is the sequence of its sampled frames' 64-bit pHashes (phase 1). Candidates: two
clips sharing a bit-sampling LSH band key of any of their frames (the image pHash bands). Verification: the
second clip is slid against the first by up to `max_shift_s` (in sampled frames); at each offset where at
least `min_overlap` of the shorter clip's frames overlap, the median Hamming distance of the aligned frames
is taken; the pair matches when the best is at most `max_distance` bits. Matches form a graph whose
connected components keep one clip each: the longest, then the largest, then the smallest id. The others
are dropped as `near_duplicate_video`, naming the survivor; every live clip gets its cluster and its size.

Runs in the driver: it holds the exact-dedup survivors' pHash sequences (8 B per sampled frame, about
0.5 GB for a million clips of 64 frames) and verifies candidates in one process.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.common.storage import Location, rmtree
from vlmforge.pipeline.config import VideoConfig
from vlmforge.pipeline.dedup.components import components_local, unique_pairs
from vlmforge.pipeline.dedup.near import RESULT_SCHEMA, Part, bucket_pairs, live_rows
from vlmforge.pipeline.dedup.phash import band_keys, hamming
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.registry import Context, PhaseResult

REASON = "near_duplicate_video"
BUCKET_WINDOW = 64


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


def candidate_pairs(seqs: list[np.ndarray], cfg: VideoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clip index pairs (hi, lo) sharing an LSH band key of any of their frames' pHashes."""
    nd = cfg.near_dedup
    lengths = np.array([len(s) for s in seqs], np.int64)
    if not len(seqs) or not lengths.sum():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    hashes = np.concatenate(seqs).astype(np.uint64)
    owner = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    keys = band_keys(hashes, nd.bands, nd.band_bits, nd.seed).reshape(-1)
    owners = np.repeat(owner, nd.bands)
    order = np.lexsort((owners, keys))
    keys, owners = keys[order], owners[order]
    # one entry per (key, clip): a clip's frames often share a key among themselves
    first = np.ones(len(keys), bool)
    first[1:] = (keys[1:] != keys[:-1]) | (owners[1:] != owners[:-1])
    keys, owners = keys[first], owners[first]
    i, j = bucket_pairs(keys, BUCKET_WINDOW)
    hi, lo = np.maximum(owners[i], owners[j]), np.minimum(owners[i], owners[j])
    distinct = hi != lo
    return unique_pairs(hi[distinct], lo[distinct])


def resolve_video_duplicates(
    parts: list[Part], exact_dir: Location, out_dir: Location, cfg: VideoConfig
) -> dict:
    """Find near-duplicate clips among the exact-dedup survivors of `parts`; write each part's results
    (RESULT_SCHEMA) under `out_dir`. Returns counts per reason and counters."""
    if out_dir.exists():
        rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nd = cfg.near_dedup
    columns = ["frame_phashes", "duration_s", "width", "height"]
    tables, part_of = [], []
    for part in parts:
        table, _ = live_rows(part, str(exact_dir), columns)
        tables.append(table)
        part_of += [part.name] * table.num_rows
    if not tables:
        return {"reasons": {}, "counters": {}}
    table = pa.concat_tables(tables, promote_options="default")
    n = table.num_rows
    ids = table["id"].to_pylist()
    empty = pa.scalar([], pa.list_(pa.uint64()))
    seqs = [np.asarray(s, np.uint64) for s in pc.fill_null(table["frame_phashes"], empty).to_pylist()]
    hi, lo = candidate_pairs(seqs, cfg)
    shift = round(nd.max_shift_s * cfg.fps)
    keep = [
        (d := aligned_distance(seqs[a], seqs[b], shift, nd.min_overlap)) is not None
        and d[0] <= nd.max_distance
        for a, b in zip(hi.tolist(), lo.tolist(), strict=True)
    ]
    ehi, elo = hi[np.array(keep, bool)] if keep else hi, lo[np.array(keep, bool)] if keep else lo
    nodes, comps = components_local(ehi, elo)
    duration = np.nan_to_num(table["duration_s"].to_numpy(zero_copy_only=False).astype(np.float64))
    area = np.nan_to_num(
        table["width"].to_numpy(zero_copy_only=False).astype(np.float64)
        * table["height"].to_numpy(zero_copy_only=False).astype(np.float64)
    )
    cluster = np.arange(n, dtype=np.int64)
    members: dict[int, list[int]] = {}
    for node, comp in zip(nodes.tolist(), comps.tolist(), strict=True):
        members.setdefault(comp, []).append(node)
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    size = np.ones(n, np.int32)
    for group in members.values():
        best = min(group, key=lambda k: (-duration[k], -area[k], ids[k]))
        for k in group:
            cluster[k], size[k] = best, len(group)
            if k != best:
                reasons[k], details[k] = REASON, f"near duplicate of {ids[best]}"
    results = pa.table(
        {
            "id": table["id"],
            "reason": pa.array(reasons, pa.string()),
            "detail": pa.array(details, pa.string()),
            "dup_cluster": pa.array([ids[c] for c in cluster], pa.string()),
            "dup_cluster_size": pa.array(size, pa.int32()),
            "part": pa.array(part_of, pa.string()),
        }
    )
    for name in dict.fromkeys(part_of):
        rows = results.filter(pc.equal(results["part"], name)).select(RESULT_SCHEMA.names)
        with AtomicParquetWriter(out_dir / f"{name}.parquet", RESULT_SCHEMA) as w:
            w.write(rows.sort_by("id"))
    dropped = Counter(r for r in reasons if r)
    counters = {"candidates": len(hi), "edges": len(ehi), "components": len(members)}
    return {"reasons": dict(dropped), "counters": counters}


def run(ctx: Context) -> PhaseResult:
    """Run (or reuse) the near-duplicate clip resolution; its stats as a stage."""
    layout = ctx.layout
    name = ctx.phase.name

    def compute() -> dict:
        parts = [Part(i, key, str(layout.phase1(key)[0])) for i, key in enumerate(layout.parts.values())]
        return resolve_video_duplicates(parts, layout.dir("exact_dedup"), layout.dir(name), ctx.cfg.video)

    reused = layout.done(name)
    done = layout.run_once(name, compute, ctx.log, ctx.phase.title)
    return PhaseResult(stages=[StageStats.from_done(name, ctx.rows_in, done)], timing={"reused": reused})
