"""`vlmforge synth`: generation time per kind at N pairs, curated counts with configs/curate/synthetic.yaml,
and the OCR legibility of tables and charts.

    taskset -c 0,1 .venv/bin/python benchmarks/synth.py --n 2000 --workers 2 --legibility 200

Each kind is generated through the CLI in a fresh process (imports and browser start included in the time),
then curated (input = kept + rejected is checked; the language stage must drop nothing). Targets (issue 26):
2,000 pairs of a kind in under 2 minutes on 2 cores, screenshots under 5.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = {"screenshots": 300.0}
DEFAULT_TARGET_S = 120.0


def _child_cpu() -> float:
    """User + system seconds of this process's finished children (and theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def legibility(kinds: list[str], n: int, seed: int) -> dict[str, dict]:
    """Share of cell values tesseract reads back, per kind and (charts) per chart type."""
    from vlmforge.pipeline.synth import generator
    from vlmforge.pipeline.synth.legibility import ocr_text, recovered, text_values

    out: dict[str, dict] = {}
    for kind in kinds:
        hits: dict[str, list[int]] = {}
        for i in range(n):
            s = generator(kind)(seed, i)
            values = text_values(s.structure)
            got = recovered(values, ocr_text(s.image))
            for key in ("all", s.structure.get("chart", kind)):
                h = hits.setdefault(key, [0, 0])
                h[0] += sum(got)
                h[1] += len(got)
        out[kind] = {k: round(h[0] / h[1], 4) for k, h in hits.items()} | {"images": n}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=None)
    ap.add_argument("--legibility", type=int, default=200, metavar="N", help="images per kind (0: skip)")
    ap.add_argument("--work", default=None, help="directory for the shards and outputs (default: a temp dir)")
    args = ap.parse_args()
    from vlmforge.pipeline.synth import KINDS

    kinds = args.kinds or list(KINDS)
    work = Path(args.work or tempfile.mkdtemp(prefix="synth-bench-"))
    vlmforge = str(Path(sys.executable).with_name("vlmforge"))
    results = {}
    for kind in kinds:
        raw, out = work / "raw" / kind, work / "curated" / kind
        start, cpu0 = time.perf_counter(), _child_cpu()
        subprocess.run(
            [
                vlmforge,
                "synth",
                kind,
                str(raw),
                "--n",
                str(args.n),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
            ],
            check=True,
            capture_output=True,
        )
        gen_s, gen_cpu = time.perf_counter() - start, _child_cpu() - cpu0
        start = time.perf_counter()
        subprocess.run(
            [
                vlmforge,
                "curate",
                str(ROOT / "configs/curate/synthetic.yaml"),
                "--input",
                str(raw),
                "--output",
                str(out),
                "--overwrite",
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        cur_s = time.perf_counter() - start
        m = json.loads((out / "manifest.json").read_text())
        t = m["totals"]
        assert t["input_rows"] == t["output_rows"] + t["rejected_rows"] == args.n
        stages = {s["stage"]: s for s in m["stages"]}
        reasons = {r: c for s in m["stages"] for r, c in (s.get("reasons") or {}).items() if c}
        mb = sum(p.stat().st_size for p in raw.glob("*.tar")) / 1e6
        target = TARGET_S.get(kind, DEFAULT_TARGET_S)
        results[kind] = {
            "generate_s": round(gen_s, 1),
            # CPU seconds of the generating processes: / workers = the wall time free cores would take
            "generate_cpu_s": round(gen_cpu, 1),
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "target_s": target,
            "met_wall": gen_s < target,
            "met_cpu_per_worker": gen_cpu / args.workers < target,
            "shards_mb": round(mb, 1),
            "curate_s": round(cur_s, 1),
            "kept": t["output_rows"],
            "rejected": t["rejected_rows"],
            "language_rejected": stages["language"]["rejected"],
            "reasons": reasons,
        }
        print(json.dumps({kind: results[kind]}), flush=True)
    if args.legibility:
        checked = [k for k in ("tables", "charts", "flowcharts") if k in kinds]
        legible = legibility(checked, args.legibility, args.seed)
        print(json.dumps({"legibility": legible}), flush=True)
    print(f"work dir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
