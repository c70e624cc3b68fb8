"""Phase-1 throughput against a decode-only baseline, side by side in one run on the same Ray.

    .venv/bin/python benchmarks/curate_throughput.py --n 20000

Both sides run as the same Ray Data actor pool over the same input parts. The baseline reads every pair
and decodes every image once (JPEG draft mode, as phase 1 does), nothing else. Phase 1 runs the whole
phase-1 stage list and writes its Parquet outputs. Start-up (actor launch, imports, fastText and the
lexicons, loaded in a worker's first call) is paid once per worker per job, so the steady figures are taken
from each worker's calls after its first, in the same run: the wall rate from the end of its first call to
the end of its last, and the CPU seconds of its calls (all threads; far steadier than wall time on a shared
machine) over the parts that neither side ran in a first call. (A separate run of one part per worker,
subtracted, does not work: Ray Data may give all its parts to one actor, leaving a start-up in the rest.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from PIL import Image

from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.config import CurateConfig, load_config
from vlmforge.pipeline.engine.executor import cluster_cpus, map_units, start_ray
from vlmforge.pipeline.filter.phase import Phase1Worker
from vlmforge.pipeline.readers import discover_parts, read_part
from vlmforge.pipeline.readers.common import InputPart
from vlmforge.pipeline.sample_data import write_sample_data

ROOT = Path(__file__).resolve().parents[1]

if __name__ != "__main__":
    # Imported by another benchmark: Ray's workers cannot import this module (benchmarks/ is not on their
    # path), so its classes travel by value, as they do when it runs as a script.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DecodeOnlyWorker:
    """Read every pair of a part and decode each image once; count what decoded."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)

    def decode(self, data: bytes | None) -> bool:
        try:
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG" and img.mode == "RGB":
                img.draft("RGB", (self.cfg.image.decode_side, self.cfg.image.decode_side))
            img.load()
            return True
        except Exception:
            return False

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for unit in batch.column("part").to_pylist():
            part = InputPart.from_dict(json.loads(unit))
            rows = ok = 0
            for raw in read_part(part, self.cfg.input, self.cfg.ray.batch_rows):
                rows += raw.num_rows
                ok += sum(self.decode(b) for b in raw.column("image").to_pylist() if b)
            results.append({"part": part.name, "rows": rows, "decoded": ok})
        return pa.table({"result": [json.dumps(r) for r in results]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="sample pairs (generated once, cached)")
    ap.add_argument("--data", default="/tmp/vlmforge-bench", help="cache directory for the sample data")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    args = ap.parse_args()

    data = Path(args.data) / f"n{args.n}"
    if not (data / "ground_truth_summary.json").exists():
        print(f"generating {args.n} sample pairs in {data} ...")
        write_sample_data(data, n=args.n, seed=0, progress=True)
    cfg = load_config(ROOT / "configs/curate/default.yaml", [f"input.path={data}", *args.set])
    parts = discover_parts(cfg.input)
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
    print(f"pairs: {rows} in {len(parts)} parts, {workers} Ray workers, best of {args.rounds} rounds")
    print_rates(best, rows, results, "pairs", "phase 1")


def compare_sides(
    sides: dict[str, tuple[type, Callable[[str], dict]]], units: list[dict], workers: int, rounds: int
) -> tuple[dict[str, float], int, dict[str, list[list[dict]]]]:
    """Time each side (a `CpuTimed` map_units worker and its kwargs for a work directory) over all `units`,
    alternating, best of `rounds`: each side's best seconds, the rows, and each side's results of every
    round (`results[side][round]`)."""
    best = dict.fromkeys(sides, float("inf"))
    rows = 0
    results: dict[str, list[list[dict]]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (worker, kwargs) in sides.items():
            with tempfile.TemporaryDirectory() as work:
                start = time.perf_counter()
                res = map_units(units, worker, kwargs(work), workers, False)
                best[name] = min(best[name], time.perf_counter() - start)
            rows = sum(map(rows_of, res))
            results[name].append(res)
    return best, rows, results


def rows_of(result: dict) -> int:
    """The input rows of one part's result (decode-only's `rows`, phase 1's first stage's `rows_in`)."""
    return result["rows"] if "rows" in result else result["stages"][0]["rows_in"]


def steady_wall_rate(results: list[dict]) -> float:
    """Rows per second of the workers after their first calls, summed over workers: from the end of each
    worker's first call to the end of its last, the rows of its other calls (Ray's hand-offs between calls
    included, its actor launch and the start-up in the first call not)."""
    rate = 0.0
    for pid in {r["pid"] for r in results}:
        calls = sorted((r for r in results if r["pid"] == pid), key=lambda r: r["end"])
        if len(calls) > 1:
            rate += sum(map(rows_of, calls[1:])) / (calls[-1]["end"] - calls[0]["end"])
    return rate


def steady_cpu(results: dict[str, list[dict]]) -> tuple[dict[str, float], dict[str, float], int, int]:
    """Each side's CPU seconds over all parts and over the parts that neither side ran in a worker's first
    call, the number of those parts and their rows. Parts differ in cost, so both sides are compared on the
    same parts, all from the one run: a separate run of one part per worker does not hold one start-up per
    worker (Ray Data may give all its parts to one actor)."""
    firsts = {r["part"] for res in results.values() for r in res if r["first"]}
    steady = {side: [r for r in res if r["part"] not in firsts] for side, res in results.items()}
    total = {side: sum(r["cpu_s"] for r in res) for side, res in results.items()}
    after = {side: sum(r["cpu_s"] for r in res) for side, res in steady.items()}
    some = next(iter(steady.values()))
    return total, after, len(some), sum(map(rows_of, some))


def print_rates(
    best: dict[str, float], rows: int, results: dict[str, list[list[dict]]], unit: str, label: str
) -> None:
    """The table of `compare_sides`' figures and phase 1's rate over decode-only's: end to end (best
    round), after start-up by wall time (each worker's calls after its first; best round) and by CPU (the
    workers' calls, last round)."""
    wall = {side: max(map(steady_wall_rate, res)) for side, res in results.items()}
    total, after, parts, steady_rows = steady_cpu({side: res[-1] for side, res in results.items()})
    print(
        f"| side | s, all parts | {unit}/s end to end | {unit}/s after start-up | CPU s, all parts | "
        f"CPU ms per {unit[:-1]} after start-up |"
    )
    print("|---|---|---|---|---|---|")
    for name, t in best.items():
        print(
            f"| {name} | {t:.1f} | {rows / t:.0f} | {wall[name]:.0f} | {total[name]:.1f} | "
            f"{1000 * after[name] / steady_rows:.2f} |"
        )
    d, p = "decode_only", "phase1"
    print(f"{label} / decode-only, end to end: {best[d] / best[p]:.2f}")
    print(f"{label} / decode-only, after start-up (wall, workers' non-first calls): {wall[p] / wall[d]:.2f}")
    print(f"{label} / decode-only, by CPU over all parts: {total[d] / total[p]:.2f}")
    print(
        f"{label} / decode-only, by CPU after start-up ({parts} parts run by neither side in a worker's "
        f"first call, {steady_rows} {unit}): {after[d] / after[p]:.2f}"
    )


class CpuTimed:
    """Adds to each unit's result `cpu_s`, the CPU seconds of the worker's process (all its threads, FFmpeg's
    included) over the call: unlike wall time it barely moves with other jobs' load on a shared machine. Also
    `first`: whether this was the worker's first call, the one that pays its start-up (phase 1 loads fastText
    and the lexicons there), the worker's `pid` and the call's `end` (epoch seconds)."""

    calls = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.process_time()
        out = super().__call__(batch)  # type: ignore[misc]
        cpu = (time.process_time() - start) / max(1, out.num_rows)
        first, self.calls = self.calls == 0, self.calls + 1
        extra = {"cpu_s": cpu, "first": first, "pid": os.getpid(), "end": time.time()}
        results = [json.dumps({**json.loads(r), **extra}) for r in out["result"].to_pylist()]
        return pa.table({"result": results})


class TimedDecodeOnly(CpuTimed, DecodeOnlyWorker):
    """The baseline, with its CPU seconds."""


class TimedPhase1(CpuTimed, Phase1Worker):
    """Phase 1, with its CPU seconds."""


if __name__ == "__main__":
    main()
