"""How a curate job's costs grow with rows: driver peak RSS, largest worker RSS, object-store peak, files
the global phases write, and wall time per 1k rows per phase.

    .venv/bin/python benchmarks/scale.py --sizes 100000 400000 1600000 --num-cpus 32

Inputs are caption-heavy synthetic Parquet parts (1,000 rows each): Zipf-weighted English words (wordfreq),
5% exact caption copies and 5% near copies (one word changed), and one tiny 64x64 PNG per row. Image dedup is
off (exact and near), so only captions decide. `--num-cpus` is the CPU count Ray is started with: the global
phases size their partitions from it, so a cluster's partition count is emulated on this machine while its
2 cores do the work (`ray.workers` stays at the real core count). Every job runs on Ray
(`ray.in_process_rows=0`), OCR and diversity off: the recipe's global phases are exact and near dedup.

Measured from outside the `vlmforge curate` process: its RSS (the driver), the raylet's RSS (it maps the
object store's shared memory, so the pages the store uses count there) and the largest RSS of every other
process in its tree (Ray's workers and services), sampled every 0.2 s; files written under each phase's
cache directory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_PART = 1000


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 200)).save(buf, "PNG")
    return buf.getvalue()


def write_inputs(out: Path, n: int, seed: int = 0, rows_per_part: int = ROWS_PER_PART) -> None:
    """`n` rows of id, caption, image in parts of `rows_per_part` (skipped when already written)."""
    from wordfreq import top_n_list

    marker = out / "_done"
    if marker.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    words = np.array(top_n_list("en", 20000))
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    png = tiny_png()
    for p in range(-(-n // rows_per_part)):
        m = min(rows_per_part, n - p * rows_per_part)
        lengths = rng.integers(6, 20, m)
        picks = rng.choice(len(words), int(lengths.sum()), p=weights)
        captions, start = [], 0
        for length in lengths:
            captions.append(" ".join(words[picks[start : start + length]]))
            start += length
        # 5% exact copies and 5% near copies (one word replaced) of an earlier caption of the part
        for i in rng.choice(np.arange(1, m), max(1, m // 10), replace=False):
            src = captions[rng.integers(0, i)]
            if rng.random() < 0.5:
                captions[i] = src
            else:
                toks = src.split()
                toks[rng.integers(0, len(toks))] = str(words[rng.integers(0, len(words))])
                captions[i] = " ".join(toks)
        ids = [f"{p:06d}-{i:04d}" for i in range(m)]
        table = pa.table({"id": ids, "caption": captions, "image": pa.array([png] * m, pa.binary())})
        pq.write_table(table, out / f"part-{p:06d}.parquet", row_group_size=rows_per_part)
    marker.touch()


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def run_job(inp: Path, out: Path, num_cpus: int) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "vlmforge"), "curate", str(ROOT / "configs/curate/default.yaml"),
        "--input", str(inp), "--output", str(out), "--overwrite", "--no-progress",
        "--set", f"ray.num_cpus={num_cpus}", "--set", f"ray.workers={os.cpu_count()}",
        "--set", "ray.in_process_rows=0", "--set", "exact_dedup.image=false",
        "--set", "near_dedup.image.enabled=false", "--set", "ocr.enabled=false",
        "--set", "diversity.enabled=false", "--set", "image.min_side=32", "--set", "input.id_column=id",
    ]  # fmt: skip
    peaks = {"driver": 0, "worker": 0, "raylet": 0}
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

        def poll() -> None:
            while proc.poll() is None:
                peaks["driver"] = max(peaks["driver"], rss(proc.pid))
                for pid in descendants(proc.pid):
                    role = "raylet" if comm(pid) == "raylet" else "worker"
                    peaks[role] = max(peaks[role], rss(pid))
                time.sleep(0.2)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        rc = proc.wait()
        t.join()
    wall = time.perf_counter() - start
    if rc:
        raise SystemExit(f"curate failed ({rc}); see {out.parent / (out.name + '.log')}")
    manifest = json.loads((out / "manifest.json").read_text())
    cache = out / "_work"
    files = {
        d.name: sum(1 for f in d.rglob("*") if f.is_file()) for d in sorted(cache.iterdir()) if d.is_dir()
    }
    rows = manifest["totals"]["input_rows"]
    return {
        "rows": rows,
        "wall_s": round(wall, 1),
        "driver_peak_rss_mb": round(peaks["driver"] / 2**20),
        "worker_peak_rss_mb": round(peaks["worker"] / 2**20),
        "raylet_peak_rss_mb": round(peaks["raylet"] / 2**20),  # holds the object store's shared memory
        "files": files,
        "seconds_per_1k_rows": {
            k: round(v["seconds"] / rows * 1000, 4) for k, v in manifest["phases"].items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    p.add_argument("--num-cpus", type=int, default=32, help="CPUs Ray is told it has (partition count)")
    p.add_argument("--rows-per-part", type=int, nargs="+", default=[ROWS_PER_PART],
                   help="input part sizes: one per size, or one for all (fewer rows per part: more parts)")
    p.add_argument("--workdir", default="/tmp/vlmforge-bench-scale")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    work = Path(args.workdir)
    results = []
    per_part = args.rows_per_part * len(args.sizes) if len(args.rows_per_part) == 1 else args.rows_per_part
    for n, k in zip(args.sizes, per_part, strict=True):
        inp = work / f"in-{n}-{k}"
        write_inputs(inp, n, rows_per_part=k)
        r = run_job(inp, work / f"out-{n}-{k}", args.num_cpus)
        r["parts"] = -(-n // k)
        results.append(r)
        print(json.dumps(r), flush=True)
    base = results[0]
    for r in results[1:]:
        ratio_rss = r["driver_peak_rss_mb"] / max(1, base["driver_peak_rss_mb"])
        ratio_wall = (r["wall_s"] / r["rows"]) / (base["wall_s"] / base["rows"])
        print(f"{r['rows']:,} vs {base['rows']:,}: driver peak RSS x{ratio_rss:.2f}, wall per row "
              f"x{ratio_wall:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
