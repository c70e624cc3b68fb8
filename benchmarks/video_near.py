"""Video near dedup (`video_near_dedup`) on synthetic pHash sequences: phase time and what the driver holds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_near.py --clips 20000 --frames 16 [--in-driver]

Writes phase-1-like parts (id, frame_phashes, duration_s, width, height) of random 64-bit frame pHashes,
a share of them near copies of another clip (trimmed by one frame, a few bits flipped per frame), then runs
`resolve_video_duplicates` on a local Ray (or with every task in the driver) and reports its wall time, the
driver's peak Python allocations during the call (tracemalloc: numpy and Arrow buffers allocated by Python
objects included, Ray's object store and task workers not) and the clusters found.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.common.storage import location
from vlmforge.pipeline.config import VideoConfig
from vlmforge.pipeline.dedup.near import Part, exchange_partitions
from vlmforge.pipeline.engine.executor import in_driver, start_ray


def write_parts(root: Path, clips: int, frames: int, parts: int, copies: float, seed: int) -> list[Part]:
    """`parts` Parquet files of `clips` clips in all; `copies` of them near copies of an earlier clip."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, 2**63, size=(clips, frames + 1), dtype=np.int64).astype(np.uint64)
    copy = np.flatnonzero(rng.random(clips) < copies)
    copy = copy[copy > 0]
    source = (rng.random(len(copy)) * copy).astype(np.int64)
    flips = np.zeros((len(copy), frames + 1), np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, size=flips.shape).astype(np.uint64)
    seqs[copy, :-1] = seqs[source, 1:] ^ flips[:, 1:]  # trimmed by a frame, a few bits off
    out = []
    for i, rows in enumerate(np.array_split(np.arange(clips), parts)):
        path = root / f"part{i:04d}.parquet"
        table = pa.table(
            {
                "id": [f"clip{k:08d}" for k in rows],
                "frame_phashes": pa.array(list(seqs[rows, :frames]), pa.list_(pa.uint64())),
                "duration_s": np.full(len(rows), float(frames)),
                "width": np.full(len(rows), 320, np.int32),
                "height": np.full(len(rows), 240, np.int32),
            }
        )
        pq.write_table(table, path)
        out.append(Part(i, path.stem, str(path)))
    return out


def rss() -> int:
    """This process's resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], dict]) -> tuple[dict, float, int]:
    """fn's result, its wall seconds and how far this process's RSS rose above its start meanwhile."""
    base, peak, done = rss(), [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss() - base)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return result, seconds, max(peak[0], rss() - base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20000)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--copies", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--in-driver", action="store_true", help="run every task in this process")
    args = ap.parse_args()
    from vlmforge.pipeline.video.near import resolve_video_duplicates

    cfg = VideoConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = write_parts(root, args.clips, args.frames, args.parts, args.copies, args.seed)
        partitions = exchange_partitions(args.clips * args.frames * cfg.near_dedup.bands, args.cpus)
        exact, out = location(root / "exact"), location(root / "out")

        def run() -> dict:
            return resolve_video_duplicates(parts, exact, out, cfg, partitions, 1_000_000)

        if args.in_driver:
            with in_driver():
                result, seconds, peak = measure(run)
        else:
            start_ray(None, args.cpus)
            result, seconds, peak = measure(run)
        rows = sum(pq.read_metadata(p).num_rows for p in root.glob("out/*.parquet"))
        report = {
            "clips": args.clips,
            "frames": args.frames,
            "mode": "driver" if args.in_driver else f"ray ({args.cpus} CPUs, {partitions} partitions)",
            "seconds": round(seconds, 2),
            "driver_rss_rise_mib": round(peak / 2**20, 1),
            "result_rows": rows,
            **result,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
