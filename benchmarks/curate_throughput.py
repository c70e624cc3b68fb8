"""Phase-1 throughput against a decode-only baseline, side by side in one run on the same Ray.

    .venv/bin/python benchmarks/curate_throughput.py --n 20000

Both sides run as the same Ray Data actor pool over the same input parts. Each side also runs on one part
per worker, so the start-up it pays once per job (actor launch, imports, model and lexicon loading) can
be told apart from its steady throughput. The baseline reads every pair
and decodes every image once (JPEG draft mode, as phase 1 does), nothing else. Phase 1 runs the whole
phase-1 stage list and writes its Parquet outputs.
"""

from __future__ import annotations

import argparse
import io
import json
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
    small = units[:workers]  # one part per worker: start-up cost plus a little work
    sides = {
        "decode_only": (DecodeOnlyWorker, lambda work: {"cfg_json": cfg_json}),
        "phase1": (
            Phase1Worker,
            lambda work: {"cfg_json": cfg_json, "layout_json": Layout.build(cfg, parts, work).to_json()},
        ),
    }
    best, rows, _ = compare_sides(sides, units, small, workers, args.rounds)
    print(f"pairs: {rows['all']} in {len(parts)} parts, {workers} Ray workers, best of {args.rounds} rounds")
    print_rates(best, rows, "pairs", "phase 1")


def compare_sides(
    sides: dict[str, tuple[type, Callable[[str], dict]]], units: list[dict], small: list[dict], workers: int,
    rounds: int,
) -> tuple[dict[str, dict[str, float]], dict[str, int], dict[str, dict[str, list[dict]]]]:
    """Time each side (a map_units worker and its kwargs for a work directory) over one part per worker
    (`small`) and over all `units`, alternating, best of `rounds`; the best seconds, the rows of each size
    and each side's results of the last round by size (`results[side]["all"]`)."""
    best = {name: {"all": float("inf"), "small": float("inf")} for name in sides}
    rows: dict[str, int] = {}
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in sides}
    for _ in range(rounds):
        for name, (worker, kwargs) in sides.items():
            for size, chosen in (("small", small), ("all", units)):
                with tempfile.TemporaryDirectory() as work:
                    start = time.perf_counter()
                    res = map_units(chosen, worker, kwargs(work), workers, False)
                    t = time.perf_counter() - start
                best[name][size] = min(best[name][size], t)
                rows[size] = sum(r["rows"] if "rows" in r else r["stages"][0]["rows_in"] for r in res)
                results[name][size] = res
    return best, rows, results


def print_rates(best: dict[str, dict[str, float]], rows: dict[str, int], unit: str, label: str) -> None:
    """The table of `compare_sides`' figures and phase 1's rate over decode-only's."""
    print(f"| side | s, all parts | {unit}/s end to end | s, 1 part per worker | {unit}/s after start-up |")
    print("|---|---|---|---|---|")
    rate = {}
    for name, b in best.items():
        end_to_end = rows["all"] / b["all"]
        # Start-up (actor launch, imports, model and lexicon loading) is paid once per worker per job;
        # the difference between the two runs is the steady throughput.
        rate[name] = (end_to_end, (rows["all"] - rows["small"]) / (b["all"] - b["small"]))
        print(f"| {name} | {b['all']:.1f} | {end_to_end:.0f} | {b['small']:.1f} | {rate[name][1]:.0f} |")
    print(f"{label} / decode-only, end to end: {rate['phase1'][0] / rate['decode_only'][0]:.2f}")
    print(f"{label} / decode-only, after start-up: {rate['phase1'][1] / rate['decode_only'][1]:.2f}")


if __name__ == "__main__":
    main()
