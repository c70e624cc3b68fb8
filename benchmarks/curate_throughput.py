"""Phase-1 throughput against a decode-only baseline, side by side in one run on the same Ray.

    .venv/bin/python benchmarks/curate_throughput.py --n 20000

Both sides run as the same Ray Data actor pool over the same input parts. The baseline reads every pair
and decodes every image once (JPEG draft mode, as phase 1 does), nothing else. Phase 1 runs the whole
phase-1 stage list and writes its Parquet outputs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from PIL import Image

from pipeline.config import CurateConfig, load_config
from pipeline.phase1 import Phase1Worker
from pipeline.ray_runner import cluster_cpus, map_units, start_ray
from pipeline.readers import discover_parts, read_part
from pipeline.readers.common import InputPart
from pipeline.sample_data import write_sample_data

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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="sample pairs (generated once, cached)")
    ap.add_argument("--data", default="/tmp/vlmforge-bench", help="cache directory for the sample data")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side")
    args = ap.parse_args()

    data = Path(args.data) / f"n{args.n}"
    if not (data / "ground_truth_summary.json").exists():
        print(f"generating {args.n} sample pairs in {data} ...")
        write_sample_data(data, n=args.n, seed=0, progress=True)
    cfg = load_config(ROOT / "configs/curate/default.yaml", [f"input.path={data}"])
    parts = discover_parts(cfg.input)
    start_ray(None, None)
    workers = cluster_cpus()
    cfg_json = cfg.model_dump_json()
    units = [p.to_dict() for p in parts]
    # Warm up: actor start-up and model loading are not what is measured.
    map_units(units[:workers], DecodeOnlyWorker, {"cfg_json": cfg_json}, workers, False)
    best = {"decode_only": float("inf"), "phase1": float("inf")}
    for _ in range(args.rounds):
        res, t = timed(lambda: map_units(units, DecodeOnlyWorker, {"cfg_json": cfg_json}, workers, False))
        best["decode_only"] = min(best["decode_only"], t)
        rows = sum(r["rows"] for r in res)
        with tempfile.TemporaryDirectory() as work:
            res, t = timed(
                lambda work=work: map_units(
                    units, Phase1Worker, {"cfg_json": cfg_json, "work": work}, workers, False
                )
            )
        best["phase1"] = min(best["phase1"], t)
    stages = {s["stage"]: s for s in res[0]["stages"]}
    decode_rate, phase1_rate = rows / best["decode_only"], rows / best["phase1"]
    print(f"pairs: {rows} in {len(parts)} parts, {workers} Ray workers, best of {args.rounds} rounds")
    print(
        f"| side | seconds | pairs/s |\n|---|---|---|\n| decode-only | {best['decode_only']:.1f} | "
        f"{decode_rate:.0f} |\n| phase 1 | {best['phase1']:.1f} | {phase1_rate:.0f} |"
    )
    print(f"phase 1 / decode-only = {phase1_rate / decode_rate:.2f}")
    print(
        f"(first part: {stages['image']['counters'].get('decoded', 0)} of {res[0]['stages'][0]['rows_in']} "
        "images decoded by phase 1)"
    )


if __name__ == "__main__":
    main()
