"""Phase 4, diversity: resampling by n-gram frequency (Llama 3 / MetaCLIP balancing), with TF-IDF scores.

1. Vocabulary: the hashed word n-grams (`cfg.ngram_range`, scikit-learn's HashingVectorizer) of a
   reference text (`cfg.reference`: a .txt file, a document per line, or a .parquet column), read by one
   Ray task in batches; without a reference, every n-gram of the dataset's captions.
2. Counting: one Ray task per part counts in how many of its rows each vocabulary n-gram occurs and
   returns the sparse counts plus the strings of its locally most frequent n-grams. The driver only adds
   count vectors; the sum is the global document frequency f of each n-gram. With `cfg.cache_ngrams` the
   task also returns the part's n-gram matrix (Ray's object store, spilled to disk when full), so the
   captions are tokenised once.
3. Resampling: one task per part. A row with a vocabulary n-gram of f <= T (`cfg.threshold`) is kept; so is
   a row with no vocabulary n-gram (nothing to balance it by). Otherwise each of its n-grams is sampled
   with p = (T/f)^exponent by a uniform hashed from (seed, row id, n-gram id), and the row is kept when any
   is: keep_prob = 1 - prod(1 - p). The draw depends on nothing else, so a re-run and any split of the
   rows into parts or workers keep the same rows. Each row's `diversity_score` is its largest TF-IDF
   weight (TfidfTransformer with the global idf), i.e. about the idf of its rarest n-gram.
Statistics (before / after resampling) are over the vocabulary n-grams' document counts.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.common.storage import Location, location, parquet_file, read_parquet, rmtree
from vlmforge.pipeline.config import DiversityConfig
from vlmforge.pipeline.diversity.ngrams import (
    distribution,
    doc_freqs,
    idf,
    name_ids,
    ngram_matrix,
    resample,
    restrict,
    row_hashes,
    scores,
    top_ids,
    vectorizer,
)
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import cluster_cpus, get, put, submit, wait_first
from vlmforge.pipeline.engine.survivors import surviving_rows
from vlmforge.pipeline.registry import Context, PhaseResult, global_before

REASON = "diversity_resample"
NAMED_PER_PART = 100  # strings kept per part for the global top n-grams
TOP_REPORTED = 20
READ_BATCH = 20_000
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("diversity_keep_prob", pa.float32()),
        ("diversity_score", pa.float32()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
Loader = Callable[[str], pa.Table]


@dataclass
class PartCounts:
    """One part's sparse n-gram document counts, a few n-gram strings and its counters."""

    ids: np.ndarray
    counts: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Tally:
    """The driver's sum of part counts: a dense document-frequency vector, names and counters."""

    df: np.ndarray
    names: dict[int, tuple[int, str]] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)

    def add(self, index: int, part: PartCounts) -> None:
        self.df[part.ids] += part.counts
        self.counters.update(part.counters)
        for i, name in part.names.items():  # the first part (in order) names an id: same for any worker count
            if i not in self.names or self.names[i][0] > index:
                self.names[i] = (index, name)


def reference_batches(path: str, column: str) -> Iterator[list[str]]:
    """The reference documents in batches: lines of a .txt file or values of a Parquet column."""
    if path.endswith(".parquet"):
        for batch in parquet_file(path).iter_batches(batch_size=READ_BATCH, columns=[column]):
            yield pc.fill_null(batch.column(0), "").to_pylist()
        return
    with open(path, encoding="utf-8") as f:
        while lines := list(itertools.islice(f, READ_BATCH)):
            yield [line.rstrip("\n") for line in lines]


def reference_vocabulary(cfg: DiversityConfig) -> np.ndarray:
    """Which n-gram ids (bool per id) occur in the reference text."""
    vec = vectorizer(cfg)
    seen = np.zeros(cfg.n_features, bool)
    for texts in reference_batches(cfg.reference, cfg.reference_column):
        seen[ngram_matrix(vec, texts).indices] = True
    return seen


def read_part(directory: str, part: str) -> pa.Table:
    """A `load` for parts stored as `directory/{part}.parquet`: bind the directory with functools.partial."""
    return read_parquet(location(directory) / f"{part}.parquet", columns=["id", "caption"])


def _captions(table: pa.Table) -> list[str]:
    return pc.fill_null(table["caption"], "").to_pylist()


def count_part(
    load: Loader, part: str, cfg: DiversityConfig, vocab: np.ndarray | None
) -> tuple[PartCounts, sp.csr_matrix | None]:
    """Document counts of the part's vocabulary n-grams, with strings for its most frequent ones, and the
    n-gram matrix itself when `cfg.cache_ngrams`."""
    texts = _captions(load(part))
    vec = vectorizer(cfg)
    x = ngram_matrix(vec, texts)
    if vocab is not None:
        x = restrict(x, vocab)
    ids, counts = doc_freqs(x)
    names = name_ids(vec, texts, x, top_ids(ids, counts, NAMED_PER_PART))
    return PartCounts(ids, counts, names, {"rows": len(texts)}), x if cfg.cache_ngrams else None


def resample_part(
    load: Loader,
    part: str,
    out_path: str,
    cfg: DiversityConfig,
    df: np.ndarray,
    weights: np.ndarray,
    cached: sp.csr_matrix | None,
) -> PartCounts:
    """Resample the part's rows against the global frequencies `df` (idf `weights`), write its results,
    and return the document counts of the kept rows. `cached` is the part's matrix from `count_part`."""
    table = load(part)
    x = ngram_matrix(vectorizer(cfg), _captions(table)) if cached is None else cached
    x = restrict(x, df > 0)
    keep_prob, kept, outright, no_vocab = resample(x, df, row_hashes(table["id"].to_pylist()), cfg)
    dropped = np.flatnonzero(~kept)
    detail = np.full(len(kept), None, object)
    detail[dropped] = [f"keep probability {p:.4g}" for p in keep_prob[dropped].tolist()]
    results = pa.table(
        {
            "id": table["id"],
            "diversity_keep_prob": keep_prob.astype(np.float32),
            "diversity_score": scores(x, weights).astype(np.float32),
            "reason": pa.array(np.where(kept, None, REASON), pa.string()),
            "detail": pa.array(detail, pa.string()),
        }
    )
    with AtomicParquetWriter(out_path, RESULT_SCHEMA) as w:
        w.write(results)
    ids, counts = doc_freqs(x[kept])
    counters = {
        "kept": int(kept.sum()),
        "always_kept": int(outright.sum()),
        "no_vocab": int(no_vocab.sum()),
        "sampled": int((~(outright | no_vocab)).sum()),
    }
    return PartCounts(ids, counts, counters=counters)


def run_bounded(
    task: Callable,
    calls: Iterable[tuple],
    workers: int,
    on_result: Callable[[int, list], None],
    returns: int = 1,
) -> None:
    """Run `task(*call)` as a task for every call, at most `workers` at once, handing each call's index and
    result references to `on_result` as its first result arrives, so the driver holds one at a time."""
    pending: dict[Any, tuple[int, list]] = {}
    queue = iter(enumerate(calls))
    while True:
        for index, call in itertools.islice(queue, max(1, workers) - len(pending)):
            refs = submit(task, *call, num_returns=returns)
            refs = refs if isinstance(refs, list) else [refs]
            pending[refs[0]] = (index, refs)
        if not pending:
            return
        on_result(*pending.pop(wait_first(list(pending))))


def _top_ngrams(before: Tally, after: np.ndarray) -> list[dict]:
    ids = np.flatnonzero(before.df)
    top = top_ids(ids, before.df[ids], TOP_REPORTED).tolist()
    return [
        {
            "ngram": before.names[i][1] if i in before.names else f"#{i}",
            "before": int(before.df[i]),
            "after": int(after[i]),
        }
        for i in top
    ]


def resolve_diversity(
    parts: list[str], load: Loader, out_dir: Location, cfg: DiversityConfig, workers: int
) -> dict:
    """Resample the rows `load(part)` returns (columns `id`, `caption`) for diversity, writing each part's
    results to `out_dir/{part}.parquet`. Returns drops per reason, counters and before/after statistics."""
    if out_dir.exists():
        rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if not parts or not cfg.enabled:
        return {"reasons": {}, "counters": {}, "stats": {}}
    vocab = submit(reference_vocabulary, cfg) if cfg.reference else None
    before = Tally(np.zeros(cfg.n_features, np.int64))
    matrices: list[Any] = [None] * len(parts)

    def counted(index: int, refs: list) -> None:
        before.add(index, get(refs[:1])[0])
        matrices[index] = refs[1]

    run_bounded(count_part, [(load, p, cfg, vocab) for p in parts], workers, counted, returns=2)
    rows = before.counters["rows"]
    df, weights = put(before.df), put(idf(before.df, rows))
    after = Tally(np.zeros(cfg.n_features, np.int64))

    def resampled(index: int, refs: list) -> None:
        after.add(index, get(refs[:1])[0])
        matrices[index] = None  # frees the cached matrix

    calls = (  # lazy: each matrix reference leaves the driver with its task
        (load, p, str(out_dir / f"{p}.parquet"), cfg, df, weights, matrices[i]) for i, p in enumerate(parts)
    )
    run_bounded(resample_part, calls, workers, resampled)
    counters = {
        "rows": rows,
        **after.counters,
        "vocabulary": int(get([vocab])[0].sum()) if vocab is not None else int(np.count_nonzero(before.df)),
    }
    stats = {
        "before": distribution(before.df),
        "after": distribution(after.df),
        "top_ngrams": _top_ngrams(before, after.df),
    }
    return {"reasons": {REASON: rows - counters["kept"]}, "counters": counters, "stats": stats}


def run(ctx: Context) -> PhaseResult:
    """Phase 4: n-gram frequency resampling over the captions that are still in; its stats and summary."""
    layout = ctx.layout

    def compute() -> dict:
        layout_ref = put(layout.to_json())  # once, not once per task
        stages = global_before("diversity")
        load = partial(surviving_rows, layout_ref, columns=["id", "caption"], stages=stages)
        parts = list(layout.parts.values())
        return resolve_diversity(parts, load, layout.dir("diversity"), ctx.cfg.diversity, cluster_cpus())

    done = layout.run_once("diversity", compute, ctx.log, ctx.phase.title)
    summary = report_stats(done)
    return PhaseResult(
        stages=[StageStats.from_done("diversity", ctx.rows_in, done)], manifest={"diversity": summary}
    )


def report_stats(done: dict) -> dict:
    """The diversity summary for the manifest: n-gram statistics before/after, and the top n-grams with
    their share of captions on each side (the shape `vlmforge stats --html` draws)."""
    stats, counters = done.get("stats") or {}, done.get("counters") or {}
    if not stats:
        return {}
    rows, kept = max(counters.get("rows", 0), 1), max(counters.get("kept", 0), 1)
    top = stats.get("top_ngrams", [])
    after = sorted(top, key=lambda g: -g["after"])
    return {
        "before": stats["before"],
        "after": stats["after"],
        "top_ngrams": {
            "before": [[g["ngram"], g["before"] / rows] for g in top],
            "after": [[g["ngram"], g["after"] / kept] for g in after],
        },
    }
