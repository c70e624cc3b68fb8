"""One hash exchange three ways: vlmforge's in-memory Ray exchange (one object per map x partition),
vlmforge's persisted exchange (one Parquet file per map task, one per partition) and Ray Data's hash
shuffle (`repartition(keys=...)`). Each runs in a fresh process on a fresh local Ray; wall time and the
driver's peak RSS are measured from outside.

    .venv/bin/python benchmarks/exchange.py --rows 4000000 --maps 200 --partitions 64

Map tasks generate their rows (an int64 key and a 48-byte payload), so the driver never holds the data;
reduce tasks return their row count and a checksum, checked equal across the three.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROWS_PER_BATCH = 100_000


def make_rows(seed: int, rows: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**62, rows, dtype=np.int64)
    data = pa.py_buffer(rng.integers(0, 255, (rows, 48), dtype=np.uint8).tobytes())
    payload = pa.FixedSizeBinaryArray.from_buffers(pa.binary(48), rows, [None, data])
    return pa.table({"key": keys, "payload": payload})


def checksum(table) -> tuple[int, int]:
    import numpy as np

    keys = table["key"].to_numpy()
    return int(table.num_rows), int(np.bitwise_xor.reduce(keys) if len(keys) else 0)


def run_vlmforge(rows: int, maps: int, partitions: int, persist: bool) -> list[tuple[int, int]]:
    from vlmforge.pipeline.engine.executor import Executor, get
    from vlmforge.pipeline.engine.shuffle import persisted, shuffle

    per_map = rows // maps

    def reduce_fn(table):
        import pyarrow as pa

        n, x = checksum(table)
        return pa.table({"rows": [n], "xor": [x]})

    with Executor(False, None, None):
        work = Path(tempfile.mkdtemp(prefix="vf-exchange-"))
        args = [(seed, per_map) for seed in range(maps)]
        with persisted(work / "x") if persist else contextlib.nullcontext():
            refs, _ = shuffle(make_rows, args, "key", partitions, reduce_fn)
            tables = get(refs)
    return sorted((t["rows"][0].as_py(), t["xor"][0].as_py()) for t in tables)


def run_ray_data(rows: int, maps: int, partitions: int) -> list[tuple[int, int]]:
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ray.init(include_dashboard=False, log_to_driver=False)
    ctx = DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    ctx.enable_progress_bars = False
    per_map = rows // maps
    ds = ray.data.range(maps, override_num_blocks=maps).map_batches(
        lambda b: make_rows(int(b["id"][0]), per_map), batch_size=1, batch_format="pyarrow"
    )
    ds = ds.repartition(partitions, keys=["key"])
    import pyarrow as pa

    def reduce_block(table: pa.Table) -> pa.Table:
        n, x = checksum(table)
        return pa.table({"rows": [n], "xor": [x]})

    out = ds.map_batches(reduce_block, batch_size=None, batch_format="pyarrow").take_all()
    ray.shutdown()
    return sorted((r["rows"], r["xor"]) for r in out)


def measure(kind: str, rows: int, maps: int, partitions: int) -> dict:
    """Run one contender in a child process; its wall time and the driver's peak RSS."""
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(rows), "--maps", str(maps),
           "--partitions", str(partitions)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peaks = {"driver_mb": 0.0}

    def poll() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peaks["driver_mb"] = max(peaks["driver_mb"], p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    result = json.loads(out.strip().splitlines()[-1])
    return {"kind": kind, "wall_s": round(time.perf_counter() - t0, 2),
            **{k: round(v) for k, v in peaks.items()}, "sums": result}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--maps", type=int, default=200)
    p.add_argument("--partitions", type=int, default=64)
    p.add_argument("--child", choices=["memory", "persisted", "ray_data"])
    args = p.parse_args()
    if args.child:
        if args.child == "ray_data":
            sums = run_ray_data(args.rows, args.maps, args.partitions)
        else:
            sums = run_vlmforge(args.rows, args.maps, args.partitions, args.child == "persisted")
        total = [sum(n for n, _ in sums), 0]
        for _, x in sums:
            total[1] ^= x
        print(json.dumps(total))
        return
    results = [measure(k, args.rows, args.maps, args.partitions) for k in ("memory", "persisted", "ray_data")]
    assert len({json.dumps(r["sums"]) for r in results}) == 1, results  # the same rows arrived
    print(f"{args.rows:,} rows, {args.maps} maps x {args.partitions} partitions")
    print("| exchange | wall s | driver peak RSS MB |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['kind']} | {r['wall_s']} | {r['driver_mb']} |")


if __name__ == "__main__":
    main()
