"""Planted near-duplicate captions at known Jaccard levels, exact similarities by brute force, pair metrics.

Shared by tests/pipeline/dedup/test_near_dedup.py and benchmarks/dedup.py. Background captions are random
English words
(wordfreq's list, Zipf-weighted, 3 to 30 words). A share of them get one copy each whose exact Jaccard
similarity to the original (word bigrams of the normalised text) is one of `LEVELS`: level 1 copies differ
only in case, punctuation and whitespace; the others are drawn by random word edits (substitute, insert,
delete, add or drop a word at either end) until the similarity is within `TOLERANCE` of the level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.pipeline.config import CaptionNearDupConfig
from vlmforge.pipeline.dedup.minhash import shingles
from vlmforge.pipeline.filter.signatures import MinHashSignatures

LEVELS = (0.5, 0.6, 0.7, 0.75, 0.86, 0.9, 0.95, 1.0)
TOLERANCE = 0.01
_EDITS = ("substitute", "insert", "delete", "append", "prepend", "drop_first", "drop_last")
_PUNCT = (",", ".", "!", " -", ";", ":", "?")


def vocabulary(n: int = 30_000) -> list[str]:
    """Common lowercase English words, most frequent first."""
    import wordfreq

    return [w for w in wordfreq.top_n_list("en", n) if re.fullmatch(r"[a-z]+", w)]


@dataclass
class PlantedCaptions:
    """Captions in a shuffled order, their ids, and the planted pairs (i < j) with their exact similarity."""

    captions: list[str]
    ids: list[str]
    planted: dict[tuple[int, int], float]


class _Words:
    """Zipf-weighted random words."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.vocab = np.array(vocabulary())
        weights = 1.0 / (np.arange(len(self.vocab)) + 20.0)
        self.cdf = np.cumsum(weights) / weights.sum()

    def draw(self, n: int) -> list[str]:
        return self.vocab[np.searchsorted(self.cdf, self.rng.random(n))].tolist()


def surface_variant(rng: np.random.Generator, words: list[str]) -> str:
    """The same words with other case, punctuation and whitespace."""
    style = int(rng.integers(4))
    out = [w.upper() if style == 0 else w.title() if style == 1 else w for w in words]
    if style == 3:
        out[0] = out[0].capitalize()
    parts = []
    for i, w in enumerate(out):
        sep = "" if i == 0 else str(rng.choice([" ", "  ", " \t", "\n "]))
        parts.append(sep + w + (str(rng.choice(_PUNCT)) if rng.random() < 0.15 else ""))
    return ("  " if rng.random() < 0.3 else "") + "".join(parts) + ("." if rng.random() < 0.5 else "")


def edited(rng: np.random.Generator, words: list[str], edits: int, draw: _Words) -> list[str]:
    """`words` after `edits` random word edits."""
    words = list(words)
    for op in rng.choice(_EDITS, size=edits):
        pos = int(rng.integers(len(words)))
        if op == "substitute":
            words[pos] = draw.draw(1)[0]
        elif op == "insert":
            words.insert(pos, draw.draw(1)[0])
        elif op == "append":
            words.append(draw.draw(1)[0])
        elif op == "prepend":
            words.insert(0, draw.draw(1)[0])
        elif len(words) > 2:
            del words[pos if op == "delete" else 0 if op == "drop_first" else -1]
    return words


def _copy_at(
    rng: np.random.Generator, words: list[str], level: float, draw: _Words, ngram: int, tries: int = 20
) -> str | None:
    """A copy of `words` at exact similarity `level` (within TOLERANCE), or None if none was drawn: random
    edits one at a time until the similarity falls to the level, retried when it jumps past it."""
    if level >= 1.0:
        return surface_variant(rng, words)
    base = set(shingles(" ".join(words), ngram))
    for _ in range(tries):
        copy, sim = list(words), 1.0
        while sim > level + TOLERANCE:
            copy = edited(rng, copy, 1, draw)
            other = set(shingles(" ".join(copy), ngram))
            sim = len(base & other) / len(base | other)
        if sim >= level - TOLERANCE:
            return surface_variant(rng, copy) if rng.random() < 0.5 else " ".join(copy)
    return None


def planted_captions(
    n: int, seed: int = 0, copy_share: float = 0.1, levels: tuple[float, ...] = LEVELS, ngram: int = 2
) -> PlantedCaptions:
    """`n` captions; about `copy_share` of them are planted copies of others, spread over `levels`."""
    rng = np.random.default_rng(seed)
    draw = _Words(rng)
    n_copies = int(n * copy_share)
    lengths = np.where(rng.random(n) < 0.2, rng.integers(3, 8, n), rng.integers(8, 31, n))
    flat = draw.draw(int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    originals = [flat[bounds[i] : bounds[i + 1]] for i in range(n - n_copies)]
    texts = [" ".join(w) for w in originals]
    pairs: list[tuple[int, int, float]] = []
    free = np.ones(len(originals), bool)
    for k in range(n_copies):
        level = levels[k % len(levels)]
        need = min(30, int(np.ceil(1 / max(1e-9, 1 - level))) + 1) if level < 1 else 1
        orig = int(rng.integers(len(originals)))
        while not free[orig] or len(originals[orig]) < need:  # an unused original long enough for the level
            orig = int(rng.integers(len(originals)))
        free[orig] = False
        copy = _copy_at(rng, originals[orig], level, draw, ngram)
        if copy is None:  # no copy at this level: a fresh caption instead
            texts.append(" ".join(flat[bounds[n - n_copies + k] : bounds[n - n_copies + k + 1]]))
            continue
        texts.append(copy)
        pairs.append((orig, len(texts) - 1, jaccard(texts[orig], copy, ngram)))
    order = rng.permutation(len(texts))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    planted = {}
    for a, b, sim in pairs:
        i, j = sorted((int(position[a]), int(position[b])))
        planted[(i, j)] = sim
    return PlantedCaptions([texts[i] for i in order], [f"c{i:08d}" for i in range(len(texts))], planted)


def shingle_matrix(captions: list[str], ngram: int) -> sp.csr_matrix:
    """Binary (caption x shingle) incidence matrix of the captions' shingle sets."""
    index: dict[bytes, int] = {}
    rows, cols = [], []
    for i, text in enumerate(captions):
        for g in set(shingles(text, ngram)):
            rows.append(i)
            cols.append(index.setdefault(g, len(index)))
    data = np.ones(len(rows), np.int32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(captions), max(1, len(index))))


def exact_pairs(captions: list[str], ngram: int, min_jaccard: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) whose exact Jaccard similarity of shingle sets is at least `min_jaccard`, by
    brute force (a sparse product of the incidence matrix with itself)."""
    x = shingle_matrix(captions, ngram)
    sizes = np.asarray(x.sum(axis=1)).ravel()
    out: dict[tuple[int, int], float] = {}
    step = 4096
    for lo in range(0, x.shape[0], step):
        inter = (x[lo : lo + step] @ x.T).tocoo()
        i, j, c = inter.row + lo, inter.col, inter.data
        upper = i < j
        i, j, c = i[upper], j[upper], c[upper]
        jac = c / (sizes[i] + sizes[j] - c)
        keep = jac >= min_jaccard
        out.update(zip(zip(i[keep].tolist(), j[keep].tolist(), strict=True), jac[keep].tolist(), strict=True))
    return out


def jaccard(a: str, b: str, ngram: int) -> float:
    """Exact Jaccard similarity of two captions' shingle sets."""
    x, y = set(shingles(a, ngram)), set(shingles(b, ngram))
    return len(x & y) / len(x | y) if x | y else 1.0


def pair_metrics(
    found: set[tuple[int, int]], similarity: dict[tuple[int, int], float], threshold: float
) -> dict:
    """Precision of the found pairs and recall of the true pairs (similarity >= threshold), overall and for
    pairs at least 0.1 above the threshold; `similarity` must hold every pair that may be >= threshold."""
    truth = {p for p, s in similarity.items() if s >= threshold}
    high = {p for p, s in similarity.items() if s >= threshold + 0.1 - 1e-9}
    tp = len(found & truth)
    return {
        "found": len(found),
        "true": len(truth),
        "precision": tp / len(found) if found else 1.0,
        "recall": tp / len(truth) if truth else 1.0,
        "recall_high": len(found & high) / len(high) if high else 1.0,
        "true_high": len(high),
    }


def recall_by_bin(
    found: set[tuple[int, int]], similarity: dict[tuple[int, int], float], edges: list[float]
) -> list[dict]:
    """Share of pairs found, per similarity bin [edges[k], edges[k+1])."""
    sims = np.array(list(similarity.values()))
    pairs = list(similarity)
    out = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        sel = [p for p, s in zip(pairs, sims, strict=True) if lo <= s < hi]
        out.append({"bin": f"[{lo:.2f}, {hi:.2f})", "pairs": len(sel), "found": sum(p in found for p in sel)})
    return out


CAPTION_PART_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("caption", pa.string()),
        ("caption_words", pa.int32()),
        ("minhash", pa.binary()),
    ]
)


def write_caption_part(
    ids: list[str], captions: list[str], path: str, cfg: CaptionNearDupConfig, batch_rows: int = 1024
) -> str:
    """A phase-1-like part file of captions with their MinHash columns, computed by the phase-1 stage."""
    stage = MinHashSignatures(cfg)
    words = [len(c.split()) for c in captions]
    table = pa.table({"id": ids, "caption": captions, "caption_words": pa.array(words, pa.int32())})
    with AtomicParquetWriter(path, CAPTION_PART_SCHEMA) as w:
        for start in range(0, table.num_rows, batch_rows):
            kept, _ = stage(table.slice(start, batch_rows))
            w.write(kept.select(CAPTION_PART_SCHEMA.names))
    return path


def edge_index_pairs(edges: pa.Table, rows_per_part: int, kind: int | None = None) -> set[tuple[int, int]]:
    """Edges (hi, lo node ids) as (i < j) positions of equal-sized parts written in order."""
    if kind is not None:
        edges = edges.filter(pc.equal(edges["kind"], kind))
    pos = []
    for name in ("lo", "hi"):
        nodes = edges[name].to_numpy()
        pos.append((nodes >> 32) * rows_per_part + (nodes & 0xFFFFFFFF))
    return set(zip(pos[0].tolist(), pos[1].tolist(), strict=True))
