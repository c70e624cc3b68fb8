"""Phase 4 (diversity resampling) on synthetic captions: wall time and peak memory on a local Ray.

    .venv/bin/python benchmarks/diversity.py --rows 1000000 --part-rows 50000 --cpus 2

Captions are 5-14 pseudo-words drawn from a Zipf(1.15) law over 60,000 words, 30% of them opening with one
of 40 stock phrases ("stock photo of", ...), so the n-gram counts have a heavy head. They are written as
Parquet parts (id, caption) in a temporary directory; `load` reads one part. Ray starts with `--cpus` CPUs
(not timed), then `resolve_diversity` runs three times with as many workers (default config: word 1-2-grams,
T = 20,000, exponent 0.5, 2^22 hashed features, English stop words): with the dataset's own n-grams as the
vocabulary (with and without `cache_ngrams`), and with a reference file of the 1,000 most frequent words, a
word a line (MetaCLIP-style metadata: rarer words and all bigrams are outside it, so only the head balances
the rows). Peak memory is the largest sum of the proportional set size (PSS: Ray's shared object store
counted once) of this process and all its descendants (Ray's workers, raylet, GCS), polled every 0.25 s; CPU
seconds are summed over the same processes (a figure less sensitive than wall time to other load on a shared
machine); the same sum at rest before the phase is reported too. For scale, one part's HashingVectorizer
pass is also timed in this process: without `cache_ngrams` the phase tokenises every caption twice (count,
then resample).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from vlmforge.pipeline.config import DiversityConfig
from vlmforge.pipeline.diversity.ngrams import ngram_matrix, vectorizer
from vlmforge.pipeline.diversity.phase import read_part, resolve_diversity
from vlmforge.pipeline.engine.executor import start_ray

VOCAB = 60_000
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70
PHRASES = [f"stock photo of {SYLLABLES[i]}nda" for i in range(20)] + [
    f"close up view {SYLLABLES[i]}rix" for i in range(20)
]


def _word(i: int) -> str:
    n = len(SYLLABLES)
    return SYLLABLES[i % n] + SYLLABLES[i // n % n] + SYLLABLES[i // n // n % n]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """`n` captions with a Zipfian word law and a few stock opening phrases."""
    rng = np.random.default_rng(seed)
    words = np.array([_word(i) for i in range(VOCAB)], dtype=object)
    lengths = rng.integers(5, 15, n)
    drawn = words[(rng.zipf(1.15, lengths.sum()) - 1) % VOCAB]
    ends = np.cumsum(lengths)
    phrase = rng.integers(0, len(PHRASES), n)
    with_phrase = rng.random(n) < 0.3
    caps = []
    for i, (start, end) in enumerate(zip((ends - lengths).tolist(), ends.tolist(), strict=True)):
        text = " ".join(drawn[start:end])
        caps.append(f"{PHRASES[phrase[i]]} {text}" if with_phrase[i] else text)
    return caps


def write_parts(directory: Path, captions: list[str], part_rows: int) -> list[str]:
    names = []
    for k, start in enumerate(range(0, len(captions), part_rows)):
        chunk = captions[start : start + part_rows]
        ids = [f"row{start + i:09d}" for i in range(len(chunk))]
        names.append(f"part-{k:05d}")
        pq.write_table(pa.table({"id": ids, "caption": chunk}), directory / f"{names[-1]}.parquet")
    return names


def tree_pss() -> int:
    """PSS (bytes) of this process and its descendants."""
    total = 0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each descendant, by pid."""
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[p.pid] = t.user + t.system
    return out


class PeakPoller:
    """Polls `tree_pss` in a thread; `peak` is the largest sum seen."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    cfg = DiversityConfig()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        captions = synthetic_captions(args.rows)
        parts = write_parts(Path(tmp), captions, args.part_rows)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        ngram_matrix(vectorizer(cfg), captions[: args.part_rows])
        one_part = time.perf_counter() - t0
        del captions
        reference = Path(tmp) / "reference.txt"
        reference.write_text("\n".join(_word(i) for i in range(1_000)) + "\n")
        start_ray(None, args.cpus)
        ray.get([ray.remote(lambda: None).remote() for _ in range(args.cpus)])  # workers up before timing
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "parts": len(parts),
                    "cpus": args.cpus,
                    "generate_s": round(generated, 1),
                    "one_part_vectorize_s": round(one_part, 2),
                }
            )
        )
        runs = [("dataset", None, True), ("dataset", None, False), ("reference", str(reference), True)]
        for vocabulary, ref, cache in runs:
            run = cfg.model_copy(update={"reference": ref, "cache_ngrams": cache})
            rest, cpu = tree_pss(), tree_cpu()
            with PeakPoller() as poll:
                t0 = time.perf_counter()
                done = resolve_diversity(
                    parts, functools.partial(read_part, tmp), Path(tmp) / "out", run, workers=args.cpus
                )
                wall = time.perf_counter() - t0
            cpu_s = sum(t - cpu.get(pid, 0.0) for pid, t in tree_cpu().items())
            report = {
                "vocabulary": vocabulary,
                "cache_ngrams": cache,
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu_s, 1),
                "rows_per_s": round(args.rows / wall),
                "peak_tree_pss_mib": round(poll.peak / 2**20),
                "rest_tree_pss_mib": round(rest / 2**20),
                "counters": done["counters"],
                **{k: done["stats"][k] for k in ("before", "after")},
                "top_ngrams": done["stats"]["top_ngrams"][:5],
            }
            print(json.dumps(report))
        ray.shutdown()


if __name__ == "__main__":
    main()
