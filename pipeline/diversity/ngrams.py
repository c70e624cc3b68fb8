"""Phase 4's per-part arithmetic: hashed word n-grams, document frequencies, seeded resampling, TF-IDF scores.

An n-gram is named by its HashingVectorizer feature index (its "id"); two n-grams whose hashes collide
count as one, which `n_features` keeps rare. Everything here works on one part's rows and a global
document-frequency vector `df` (dense, indexed by id, zero outside the vocabulary).
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.utils import murmurhash3_32

from vlmforge.pipeline.config import DiversityConfig
from vlmforge.pipeline.dedup.minhash import mix64

TOKEN_PATTERN = r"(?u)\b\w+\b"  # words of one character count too
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def vectorizer(cfg: DiversityConfig) -> HashingVectorizer:
    """Word n-gram counts hashed into `cfg.n_features` columns: the column index is the n-gram id."""
    return HashingVectorizer(
        analyzer="word",
        ngram_range=tuple(cfg.ngram_range),
        n_features=cfg.n_features,
        alternate_sign=False,
        norm=None,
        stop_words=cfg.stop_words,
        token_pattern=TOKEN_PATTERN,
        dtype=np.float32,
    )


def ngram_matrix(vec: HashingVectorizer, texts: list[str]) -> sp.csr_matrix:
    """Rows x n-gram ids, n-gram counts; indices sorted and unique within a row (a part with no surviving
    rows gives an empty matrix: scikit-learn fails on an empty list)."""
    if not texts:
        return sp.csr_matrix((0, vec.n_features), dtype=np.float64)
    return sp.csr_matrix(vec.transform(texts))


def restrict(x: sp.csr_matrix, allowed: np.ndarray) -> sp.csr_matrix:
    """`x` with only the columns where `allowed` (bool, per id) is true."""
    x = x.copy()
    x.data *= allowed[x.indices]
    x.eliminate_zeros()
    return x


def doc_freqs(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Sparse document frequencies of `x`'s columns: (ids, number of rows holding each)."""
    ids, counts = np.unique(x.indices, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def top_ids(ids: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """The `k` ids with the highest counts (ties to the lower id), most frequent first."""
    order = np.lexsort((ids, -counts))[:k]
    return ids[order]


def ngram_id(gram: str, n_features: int) -> int:
    """HashingVectorizer's column of one n-gram string (signed MurmurHash3, seed 0, as its Cython code)."""
    h = murmurhash3_32(gram, seed=0)
    return (2**31 - 1 - (n_features - 1)) % n_features if h == -(2**31) else abs(h) % n_features


def name_ids(vec: HashingVectorizer, texts: list[str], x: sp.csr_matrix, ids: np.ndarray) -> dict[int, str]:
    """A string for each of `ids` found in `x`: an n-gram of the first row holding it that hashes to it."""
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    held = np.isin(x.indices, ids)
    found, first = np.unique(x.indices[held], return_index=True)
    analyze = vec.build_analyzer()
    names: dict[int, str] = {}
    for i, row in zip(found.tolist(), rows[held][first].tolist(), strict=True):
        names[i] = next(g for g in analyze(texts[row]) if ngram_id(g, vec.n_features) == i)
    return names


def row_hashes(ids: list[str]) -> np.ndarray:
    """A 64-bit hash of each row id (BLAKE2b), the same in every process and run."""
    digest = b"".join(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in ids)
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


def uniforms(row_hash: np.ndarray, features: np.ndarray, seed: int) -> np.ndarray:
    """A uniform in [0, 1) per (row hash, n-gram id, seed): a pure function, so any split agrees."""
    with np.errstate(over="ignore"):
        salt = mix64(np.uint64(seed) * _GOLDEN + np.uint64(0x2545F4914F6CDD1D))
        h = mix64(row_hash ^ mix64(features.astype(np.uint64) * _GOLDEN + salt))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def resample(
    x: sp.csr_matrix, df: np.ndarray, row_hash: np.ndarray, cfg: DiversityConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep probability and keep decision of each row of `x` (restricted to vocabulary n-grams), with the
    masks of rows kept outright (an n-gram with f <= T) and rows without a vocabulary n-gram (kept, p = 1).

    Each n-gram of frequency f is sampled with p = min(1, (T/f)^exponent), independently, by its seeded
    uniform; a row is kept when any of its n-grams is, so P(keep) = 1 - prod(1 - p).
    """
    n = x.shape[0]
    rows = np.repeat(np.arange(n), np.diff(x.indptr))
    p = np.minimum(1.0, (cfg.threshold / df[x.indices].astype(np.float64)) ** cfg.exponent)
    no_vocab = np.diff(x.indptr) == 0
    outright = np.bincount(rows, weights=p >= 1.0, minlength=n) > 0
    with np.errstate(divide="ignore"):
        log_miss = np.bincount(rows, weights=np.log1p(-p), minlength=n)
    keep_prob = np.where(outright | no_vocab, 1.0, -np.expm1(log_miss))
    sampled = np.flatnonzero(~(outright | no_vocab)[rows])
    hits = uniforms(row_hash[rows[sampled]], x.indices[sampled], cfg.seed) < p[sampled]
    kept = outright | no_vocab | (np.bincount(rows[sampled], weights=hits, minlength=n) > 0)
    return keep_prob, kept, outright, no_vocab


def idf(df: np.ndarray, n_rows: int) -> np.ndarray:
    """scikit-learn's smooth idf, ln((1 + n) / (1 + df)) + 1, from global document counts."""
    return np.log((1.0 + n_rows) / (1.0 + df)) + 1.0


def scores(x: sp.csr_matrix, weights: np.ndarray) -> np.ndarray:
    """Each row's diversity score: the largest TF-IDF weight (sublinear tf, no norm) of its vocabulary
    n-grams, i.e. about the idf of its rarest n-gram; 0 for a row without one."""
    if x.shape[0] == 0:  # scikit-learn refuses an empty matrix
        return np.zeros(0, np.float64)
    tfidf = TfidfTransformer(norm=None, sublinear_tf=True)
    tfidf.idf_ = weights
    return np.asarray(tfidf.transform(x).max(axis=1).todense()).ravel()


def distribution(df: np.ndarray) -> dict:
    """Concentration of n-gram document counts: share of the 100 largest, entropy (bits), distinct ids."""
    counts = df[df > 0].astype(np.float64)
    total = counts.sum()
    if not total:
        return {"top100_share": 0.0, "entropy": 0.0, "distinct": 0}
    p = counts / total
    head = np.partition(counts, len(counts) - 100)[-100:] if len(counts) > 100 else counts
    return {
        "top100_share": float(head.sum() / total),
        "entropy": float(-(p * np.log2(p)).sum()),
        "distinct": len(counts),
    }
