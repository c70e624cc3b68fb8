"""The shard writer every kind shares: webdataset tars (`key.png`, `key.txt`, `key.json`) that
`vlmforge curate` reads like any other input, written in parallel processes, deterministic from the seed."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from vlmforge.common.files import write_bytes
from vlmforge.pipeline.sample_data.writer import add_member

SYNTH_VERSION = 1
SUMMARY = "synth_summary.json"


@dataclass
class Sample:
    """One generated pair: the image, the target text (the caption) and the structure it was made from."""

    image: bytes
    caption: str
    structure: dict[str, Any] = field(default_factory=dict)
    ext: str = "png"


def sample_key(kind: str, index: int) -> str:
    """The webdataset key of sample `index` (no dots: the key ends at the first one)."""
    return f"{kind}_{index:07d}"


def shard_bytes(kind: str, seed: int, start: int, samples: list[Sample]) -> bytes:
    """A tar of `samples` numbered from `start`; the JSON sidecar holds the kind, seed and structure."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, s in enumerate(samples, start):
            key = sample_key(kind, i)
            meta = {"key": key, "kind": kind, "seed": seed, "index": i, "structure": s.structure}
            add_member(tar, f"{key}.{s.ext}", s.image)
            add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
            add_member(tar, f"{key}.txt", s.caption.encode("utf-8"))
    return buf.getvalue()


# A generator: (seed, index) -> Sample. Resolved by name in each worker (a spawned process imports it).
Generator = Callable[[int, int], Sample]


def _generator(kind: str) -> Generator:
    from vlmforge.pipeline.synth import generator

    return generator(kind)


def _write_shard(kind: str, seed: int, start: int, stop: int, path: str) -> int:
    gen = _generator(kind)
    samples = [gen(seed, i) for i in range(start, stop)]
    write_bytes(Path(path), shard_bytes(kind, seed, start, samples))
    return len(samples)


def write_shards(
    kind: str, out: Path, n: int, seed: int, shard_size: int, workers: int, progress: bool = False
) -> list[str]:
    """Writes n samples of `kind` to out/NNNNN.tar (shard_size each), `workers` processes at a time; shards
    of an earlier, larger run in `out` are removed. Sample i depends only on (kind, seed, i)."""
    out.mkdir(parents=True, exist_ok=True)
    ranges = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    names = [f"{j:05d}.tar" for j in range(len(ranges))]
    jobs = [(kind, seed, a, b, str(out / name)) for (a, b), name in zip(ranges, names, strict=True)]
    done = 0

    def report(count: int, name: str) -> None:
        nonlocal done
        done += count
        if progress:
            print(f"synth {kind}: {done}/{n} samples, {name}", file=sys.stderr, flush=True)

    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for job, name in zip(jobs, names, strict=True):
            report(_write_shard(*job), name)
    else:
        # spawn: a forked copy of a process that imported torch or Ray (the CLI's) is not safe to run
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_write_shard, *job) for job in jobs]
            for fut, name in zip(futures, names, strict=True):
                report(fut.result(), name)
    for stale in out.glob("[0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in names:
            stale.unlink()
    summary = {
        "synth_version": SYNTH_VERSION,
        "kind": kind,
        "n": n,
        "seed": seed,
        "shard_size": shard_size,
        "shards": names,
    }
    write_bytes(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return names


def default_workers() -> int:
    """One process per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
