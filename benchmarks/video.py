"""Video phase 1 against a decode-only pass over the same clips, side by side in one run on the same Ray.

    .venv/bin/python benchmarks/video.py --n 2000
    .venv/bin/python benchmarks/video.py --n 200 --shard-size 20 --size 640x360 --seconds 10 --fps 24 \
        --grain 5

Both sides run as the same Ray Data actor pool over the same input parts (webdataset shards of the
synthetic clips of `vlmforge sample-data --video`). The baseline reads every clip and decodes every frame of
its video stream once with PyAV, nothing else. Phase 1 runs the video recipe's whole phase-1 stage list
(caption checks, language ID, header checks, decode with frame sampling at `video.fps`, JPEG frames, frame
pHashes, dedup keys) and writes its Parquet outputs. The figures after start-up (actor launch, imports, the
fastText model) are those of each worker's calls after its first, by wall time and by CPU seconds, as in
`curate_throughput.py`, whose timing code this shares.
Target (issue 25): phase 1 >= 0.8x the decode-only rate.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import pyarrow as pa
from curate_throughput import CpuTimed, TimedPhase1, compare_sides, print_rates

from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.config import CurateConfig, load_config
from vlmforge.pipeline.engine.executor import cluster_cpus, start_ray
from vlmforge.pipeline.filter.phase import Phase1Worker
from vlmforge.pipeline.readers import discover_parts
from vlmforge.pipeline.readers.common import InputPart
from vlmforge.pipeline.readers.video import read_video_part
from vlmforge.pipeline.sample_data.video import ClipShape, write_video_sample_data

ROOT = Path(__file__).resolve().parents[1]


def decode_all(data: bytes | None) -> int:
    """Frames of the clip's first video stream, all decoded (0 when it does not open)."""
    if not data:
        return 0
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return 0
            return sum(1 for _ in container.decode(container.streams.video[0]))
    except Exception:
        return 0


class DecodeOnlyWorker:
    """Read every clip of a part and decode all its frames once; count them."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for unit in batch.column("part").to_pylist():
            part = InputPart.from_dict(json.loads(unit))
            rows = frames = 0
            for raw in read_video_part(part, self.cfg, self.cfg.ray.batch_rows):
                rows += raw.num_rows
                frames += sum(decode_all(b) for b in raw.column("video").to_pylist())
            results.append({"part": part.name, "rows": rows, "frames": frames})
        return pa.table({"result": [json.dumps(r) for r in results]})


class TimedDecodeOnly(CpuTimed, DecodeOnlyWorker):
    """The baseline, with its CPU seconds."""


def in_process(cfg: CurateConfig, parts: list, rounds: int) -> dict[str, dict[str, float]]:
    """Both sides over the same parts in this process, alternating, best of `rounds` each (wall and CPU
    seconds): the steady per-clip cost without Ray, less exposed to other load on a shared machine."""
    cfg_json = cfg.model_dump_json()
    units = pa.table({"part": [json.dumps(p.to_dict()) for p in parts]})
    best = {side: {"wall": float("inf"), "cpu": float("inf")} for side in ("decode_only", "phase1")}
    decode = DecodeOnlyWorker(cfg_json)
    with tempfile.TemporaryDirectory() as work:
        phase1 = Phase1Worker(cfg_json, Layout.build(cfg, parts, work).to_json())
        phase1(units)  # loads fastText and the lexicons once, as an actor does at its start

    def timed(side: str, call: Callable[[pa.Table], pa.Table]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        call(units)
        best[side]["wall"] = min(best[side]["wall"], time.perf_counter() - wall)
        best[side]["cpu"] = min(best[side]["cpu"], time.process_time() - cpu)

    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as work:
            phase1.layout = Layout.build(cfg, parts, work)  # a fresh cache: every part runs again
            timed("phase1", phase1)
        timed("decode_only", decode)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="sample clips (generated once, cached)")
    ap.add_argument("--shard-size", type=int, default=50, help="clips per shard (one part each)")
    ap.add_argument("--data", default="/tmp/vlmforge-bench-video", help="cache directory of the sample clips")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side")
    ap.add_argument("--size", default=None, metavar="WxH", help="clean clips' size (default: the sample's)")
    ap.add_argument("--seconds", type=float, default=None, help="clean clips' duration (default: 3-5 s)")
    ap.add_argument("--fps", type=int, default=8, help="clips' frame rate (default 8)")
    ap.add_argument("--grain", type=float, default=0.0,
                    help="noise std on every frame: 5 gives web-video bitrates (~0.8 Mbit/s at 640x360, ~2.5 "
                         "at 1280x720; flat clips ~0.08), where decoding costs what it does on real clips")
    ap.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="PARTS",
        help="also time both sides over this many parts in this process (no Ray), best of rounds",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    args = ap.parse_args()

    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    shape = ClipShape(size, args.seconds, args.fps, grain=args.grain)
    data = Path(args.data) / f"n{args.n}-s{args.shard_size}-{args.size}-{args.seconds}-{args.fps}"
    data = data.with_name(data.name + (f"-g{args.grain:g}" if args.grain else ""))
    if not (data / "ground_truth_summary.json").exists():
        print(f"generating {args.n} sample clips in {data} ...")
        write_video_sample_data(data, args.n, seed=0, shard_size=args.shard_size, shape=shape)
    cfg = load_config(ROOT / "configs/curate/video.yaml", [f"input.path={data}", *args.set])
    parts = discover_parts(cfg.input)
    if args.in_process:
        chosen = parts[: args.in_process]
        t = in_process(cfg, chosen, max(args.rounds, 3))
        for kind in ("wall", "cpu"):
            print(
                f"in process, {len(chosen)} parts, best of {max(args.rounds, 3)}, {kind} s: decode-only "
                f"{t['decode_only'][kind]:.2f}, phase 1 {t['phase1'][kind]:.2f}, "
                f"phase 1 / decode-only rate {t['decode_only'][kind] / t['phase1'][kind]:.2f}"
            )
    start_ray(None, None)
    workers = cluster_cpus()
    cfg_json = cfg.model_dump_json()
    units = [p.to_dict() for p in parts]
    sides = {
        "decode_only": (TimedDecodeOnly, lambda work: {"cfg_json": cfg_json}),
        "phase1": (
            TimedPhase1,
            lambda work: {"cfg_json": cfg_json, "layout_json": Layout.build(cfg, parts, work).to_json()},
        ),
    }
    best, rows, results = compare_sides(sides, units, workers, args.rounds)
    frames = sum(r["frames"] for r in results["decode_only"][-1])
    print(
        f"clips: {rows} ({frames} frames decoded by the baseline) in {len(parts)} parts, "
        f"{workers} Ray workers, best of {args.rounds} rounds"
    )
    print_rates(best, rows, results, "clips", "video phase 1")


if __name__ == "__main__":
    main()
