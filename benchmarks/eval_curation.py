"""Proxy evaluation of curation on the sample data: the default recipe vs no filtering, equal samples seen.

    .venv/bin/python benchmarks/eval_curation.py --work /tmp/evalcur --budgets 6400 12800

Builds (once, in --work) the 2,000-pair sample data, a 1,000-pair held-out eval set written apart from it
(`sample-data --eval --exclude`), and two curated outputs: configs/curate/default.yaml and
configs/curate/unfiltered.yaml. `--runs ... mismatched` adds a control: the default output with a share
(--control) of its captions moved to other rows (misaligned pairs, which an alignment filter would drop),
to check that the protocol detects harmful data at all. Then, per budget, it times the command a user runs,

    vlmforge eval-curation WORK/curated WORK/unfiltered --eval-set WORK/eval --budget B

(3 seeds each, the deepspeed launcher, the CPU here) and records the load average before and after, since
this 2-core machine is shared. Prints a Markdown table for benchmarks/RESULTS.md and writes
WORK/bench-<runs>-<budgets>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
VLMFORGE = str(Path(sys.executable).with_name("vlmforge"))
RECIPES = {"curated": "configs/curate/default.yaml", "unfiltered": "configs/curate/unfiltered.yaml"}


def run(cmd: list[str], quiet: bool = True) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None)


def prepare(work: Path, n: int, eval_n: int) -> None:
    """Sample data, the held-out set apart from it, and the two curated outputs (skipped when present)."""
    if not (work / "raw" / "ground_truth.jsonl").is_file():
        run([VLMFORGE, "sample-data", str(work / "raw"), "--n", str(n), "--seed", "0"])
    if not (work / "eval" / "labels.jsonl").is_file():
        run([VLMFORGE, "sample-data", str(work / "eval"), "--eval", "--n", str(eval_n), "--exclude",
             str(work / "raw")])
    for name, recipe in RECIPES.items():
        if not (work / name / "manifest.json").is_file():
            run([VLMFORGE, "curate", recipe, "--input", str(work / "raw"), "--output", str(work / name),
                 "--no-progress"])


def mismatched(src: Path, dst: Path, share: float, seed: int = 0) -> Path:
    """A copy of curated output `src` whose captions are moved to other rows for `share` of its rows."""
    if (dst / "manifest.json").is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "data").mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for f in manifest["files"]["data"]:
        table = pq.read_table(src / f)
        rng = np.random.default_rng(seed)
        rows = rng.choice(table.num_rows, int(share * table.num_rows), replace=False)
        for column in ("caption", "original_caption"):
            values = table[column].to_pylist()
            moved = [values[i] for i in np.roll(rows, 1)]  # each picked row gets another picked row's text
            for i, v in zip(rows, moved, strict=True):
                values[i] = v
            array = pa.array(values, table.schema.field(column).type)
            table = table.set_column(table.schema.get_field_index(column), column, array)
        pq.write_table(table, dst / f)
    manifest["files"]["rejected"] = []
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/evalcur"))
    ap.add_argument("--n", type=int, default=2000, help="sample pairs (default 2000)")
    ap.add_argument("--eval-n", type=int, default=1000, help="held-out pairs (default 1000)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[12800], help="samples seen per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=["curated", "unfiltered"],
                    choices=["curated", "unfiltered", "mismatched"], help="sets to evaluate, in table order")
    ap.add_argument("--control", type=float, default=0.3,
                    help="share of curated captions the 'mismatched' set moves to other rows (default 0.3)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.n, args.eval_n)
    if "mismatched" in args.runs:
        mismatched(args.work / "curated", args.work / "mismatched", args.control)
    runs = [args.work / name for name in args.runs]
    report = {"runs": [str(r) for r in runs], "budgets": []}
    for budget in args.budgets:
        before, t0 = load(), time.perf_counter()
        cmd = [VLMFORGE, "eval-curation", *map(str, runs), "--eval-set", str(args.work / "eval"), "--budget",
               str(budget), "--seeds", *map(str, args.seeds), "--no-progress"]
        print("$ " + " ".join(cmd), flush=True)
        with open(args.work / f"eval_curation_{budget}.log", "w") as log:  # the launchers' chatter
            subprocess.run(cmd, check=True, cwd=ROOT, stderr=log)
        wall = time.perf_counter() - t0
        results = {r.name: json.loads((r / "eval_curation.json").read_text()) for r in runs}
        report["budgets"].append({"budget": budget, "wall_s": round(wall, 1), "load_before": before,
                                  "load_after": load(), "results": results})
    name = "bench-" + "-".join(args.runs + [str(b) for b in args.budgets])
    (args.work / f"{name}.json").write_text(json.dumps(report, indent=2))
    print_markdown(report)
    return 0


def print_markdown(report: dict) -> None:
    keys = ["i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zero_shot"]
    print("\n| budget | run | rows | " + " | ".join(keys) + " | train s / seed | wall s (load 1/5/15 min) |")
    print("|" + "---|" * (len(keys) + 5))
    for b in report["budgets"]:
        for name, r in b["results"].items():
            cells = [f"{r['summary'][k]['mean']:.3f} ± {r['summary'][k]['std']:.3f}" for k in keys]
            seeds = ", ".join(f"{s['train_s']:.0f}" for s in r["seeds"])
            print(f"| {b['budget']:,} | {name} | {r['train_rows']:,} | " + " | ".join(cells)
                  + f" | {seeds} | {b['wall_s']} ({b['load_before']} -> {b['load_after']}) |")
        first_name, first = next(iter(b["results"].items()))
        for name, r in list(b["results"].items())[1:]:
            cells = []
            for k in keys:
                pairs = zip(r["seeds"], first["seeds"], strict=True)
                diffs = [s["metrics"][k] - f["metrics"][k] for s, f in pairs]
                cells.append(f"{np.mean(diffs):+.3f} (seeds {', '.join(f'{x:+.3f}' for x in diffs)})")
            print(f"| {b['budget']:,} | {name} − {first_name} | | " + " | ".join(cells) + " | | |")
    chance = next(iter(report["budgets"][0]["results"].values()))["settings"]["chance"]
    print("| | chance | | " + " | ".join(f"{chance.get(k, 0):.3f}" for k in keys) + " | | |")


if __name__ == "__main__":
    sys.exit(main())
