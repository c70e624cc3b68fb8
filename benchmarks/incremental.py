"""Incremental re-curation on the sample data: a full run, then runs with one threshold changed.

    .venv/bin/python benchmarks/incremental.py --n 10000

Every run is `vlmforge curate configs/curate/default.yaml` in a fresh process on the same output (its cache
in `<output>/_work`), so imports and starting Ray are counted, as a user would pay them:
1. full: an empty cache.
2. language: `language.min_score` 0.5 -> 0.95. Phase 1 re-decides every part from its per-row
   measurements; the global phases rerun after it (OCR takes its rows from its row cache).
3. near-dup: `near_dedup.caption.threshold` 0.8 -> 0.7. Phase 1 and exact dedup are reused.
Per run: wall seconds and their share of the full run, image decodes (the image stage's `decoded`
counter), fastText calls (language rows not served by the cache), tesseract calls, seconds per phase.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from dedup import run_measured

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "full": [],
    "language.min_score 0.5 -> 0.95": ["language.min_score=0.95"],
    "near_dedup.caption.threshold 0.8 -> 0.7": ["near_dedup.caption.threshold=0.7"],
}


def curate(raw: Path, out: Path, overrides: list[str], log: Path) -> dict:
    """One `vlmforge curate` process: its wall time, and the counts read from its manifest."""
    cmd = [
        str(ROOT / ".venv/bin/vlmforge"), "curate", str(ROOT / "configs/curate/default.yaml"),
        "--input", str(raw), "--output", str(out), "--no-progress",
    ]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    measured = run_measured(cmd, log)
    if measured["rc"] != 0:
        sys.exit(f"curate failed ({' '.join(cmd)}), see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["stages"]}
    ran = manifest["phases"]["phase1"]["counters"]  # this run's phase-1 work, without cached parts
    return {
        **measured,
        "decodes": ran.get("image", {}).get("decoded", 0),
        "fasttext_calls": ran.get("language", {}).get("fasttext_calls", 0),
        "tesseract_calls": stages["ocr"]["counters"].get("ocr_run", 0),
        "kept": manifest["totals"]["output_rows"],
        "phases": {k: v["seconds"] for k, v in manifest["phases"].items()},
    }


def markdown(results: dict[str, dict]) -> str:
    full = results["full"]["wall_s"]
    phases = list(results["full"]["phases"])
    lines = [
        "| run | wall s | of full | image decodes | fastText calls | tesseract calls | kept | "
        + " | ".join(phases) + " |",
        "|---" * (7 + len(phases)) + "|",
    ]
    for name, r in results.items():
        cells = [name, f"{r['wall_s']:.1f}", f"{r['wall_s'] / full:.0%}", r["decodes"], r["fasttext_calls"],
                 r["tesseract_calls"], r["kept"], *(f"{r['phases'].get(p, 0):.1f}" for p in phases)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="sample pairs")
    ap.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary one otherwise")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vlmforge-bench-incremental-"))
    raw, out = work / "raw", work / "out"
    if not raw.is_dir():
        from vlmforge.pipeline.sample_data import write_sample_data

        write_sample_data(raw, n=args.n, seed=0)
    shutil.rmtree(out, ignore_errors=True)
    results = {name: curate(raw, out, overrides, work / f"run{i}.log") for i, (name, overrides) in
               enumerate(RUNS.items())}  # fmt: skip
    print(f"{args.n} sample pairs, default recipe\n")
    print(markdown(results))
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
