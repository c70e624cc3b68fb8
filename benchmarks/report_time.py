"""HTML report generation time and peak memory on a large curated output (200k kept rows by default).

    .venv/bin/python benchmarks/report_time.py --rows 200000

The large output is made cheaply: a curated output (of the 2,000-pair sample data, curated here unless
`--src` names one) is replicated with new ids into shards of 10,000 rows (row groups of 1,000, zstd), with
its rejected rows and a manifest whose counts scale to match. Then the report is timed as a user runs it,

    /usr/bin/time -v .venv/bin/vlmforge stats DIR --html DIR/report.html

and the same in-process for a per-step breakdown. For scale, a plain read of every column of data/
(images included) is timed too: the report must cost far less than that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
VLMFORGE = str(Path(sys.executable).with_name("vlmforge"))


def curate_sample(work: Path) -> Path:
    """The 2,000-pair sample data curated with the default recipe."""
    subprocess.run([VLMFORGE, "sample-data", str(work / "raw"), "--n", "2000"], check=True)
    out = work / "curated"
    recipe = str(ROOT / "configs/curate/default.yaml")
    cmd = [VLMFORGE, "curate", recipe, "--input", str(work / "raw"), "--output", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def _with_ids(table: pa.Table, copy: int) -> pa.Table:
    ids = pc.binary_join_element_wise(table["id"], pa.scalar(f"{copy:05d}"), "-")
    return table.set_column(table.schema.get_field_index("id"), "id", ids)


def replicate(src: Path, dst: Path, rows: int) -> dict:
    """Copies of `src` with new ids until data/ holds at least `rows` rows; returns the new manifest."""
    manifest = json.loads((src / "manifest.json").read_text())
    data = pads.dataset([str(src / f) for f in manifest["files"]["data"]]).to_table()
    rejected = pads.dataset([str(src / f) for f in manifest["files"]["rejected"]]).to_table()
    copies = math.ceil(rows / data.num_rows)
    (dst / "data").mkdir(parents=True)
    (dst / "rejected").mkdir()
    schema = pq.read_schema(src / manifest["files"]["data"][0])
    files, shard, pending = [], 0, []

    def flush() -> None:
        nonlocal shard, pending
        name = f"data/part-{shard:05d}-000.parquet"
        table = pa.concat_tables(pending).cast(schema)
        pq.write_table(table, dst / name, row_group_size=1000, compression="zstd")
        files.append(name)
        shard, pending = shard + 1, []

    rejected_files = []
    for k in range(copies):
        pending.append(_with_ids(data, k))
        if sum(t.num_rows for t in pending) >= 10_000:
            flush()
        name = f"rejected/part-{k:05d}.parquet"
        pq.write_table(_with_ids(rejected, k), dst / name, row_group_size=1000, compression="zstd")
        rejected_files.append(name)
    if pending:
        flush()
    for s in manifest["stages"]:
        for key in ("rows_in", "rows_out", "rejected"):
            s[key] *= copies
        s["reasons"] = {r: n * copies for r, n in s["reasons"].items()}
    manifest["totals"] = {k: v * copies for k, v in manifest["totals"].items()}
    manifest["files"] = {"data": files, "rejected": rejected_files}
    manifest["input"]["parts"] *= copies
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="kept rows in the large output")
    ap.add_argument("--src", type=Path, help="curated output to replicate (default: curate the sample data)")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="report_time_"))
    try:
        src = args.src or curate_sample(work)
        big = work / "big"
        if big.exists():
            shutil.rmtree(big)
        t0 = time.perf_counter()
        manifest = replicate(src, big, args.rows)
        t = manifest["totals"]
        print(f"built {big}: {t['output_rows']:,} kept, {t['rejected_rows']:,} rejected rows, "
              f"data/ {_du(big / 'data'):.0f} MB, in {time.perf_counter() - t0:.1f} s")

        print(f"load average before timing: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
        html = big / "report.html"
        cmd = ["/usr/bin/time", "-v", VLMFORGE, "stats", str(big), "--html", str(html)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
        wall = time.perf_counter() - t0
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
        print(f"cli: {wall:.2f} s wall, peak RSS {rss:.0f} MiB, report {html.stat().st_size / 1e6:.2f} MB "
              f"({r.stdout.strip()})")

        from vlmforge.pipeline.report.html import write_report

        info = write_report([big], work / "again.html")
        print("in-process breakdown (s):", json.dumps(info["runs"][0]), f"total {info['total_s']:.2f}")

        t0 = time.perf_counter()
        n = pads.dataset([str(big / f) for f in manifest["files"]["data"]]).to_table().num_rows
        print(f"for scale: reading every column of data/ ({n:,} rows, images included): "
              f"{time.perf_counter() - t0:.2f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
