"""MinHash signatures over caption shingles, vectorised over a batch, and their LSH band keys.

Signatures equal datasketch's `MinHash(num_perm, seed)` (scheme "affine32", SHA-1 32-bit shingle hashes)
updated with the same shingles: the permutations are taken from datasketch itself, and the arithmetic
(MurmurHash3 finalizer, then `a * h + b mod 2^32`, then the minimum) is the same, done for all shingles of
all captions of a batch at once.
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import cache

import numpy as np

from vlmforge.pipeline.filter.text import (  # the same normalisation as exact dedup
    _NOT_WORD,
    normalize_for_dedup,
)

EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a MinHash that saw nothing


def _grams(words: list[bytes], n: int) -> list[bytes]:
    if len(words) <= n:
        return [b" ".join(words)] if words else []
    return list(map(b" ".join, zip(*(words[k:] for k in range(n)), strict=False)))


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalised caption (case, punctuation and whitespace ignored), as UTF-8.

    A caption with fewer than `n` words is one shingle; a caption with no word is none."""
    return _grams(normalize_for_dedup(text).encode().split(), n)


_SEP = "\x1e"  # a whitespace character that normalisation keeps: the batch is normalised as one string


def normalized_words(texts: list[str]) -> list[list[bytes]]:
    """`normalize_for_dedup(t).encode().split()` for every text, with the Unicode normalisation, case fold
    and punctuation removal done once over the whole batch (half the per-caption cost)."""
    if not texts:
        return []
    if not any(_SEP in t for t in texts):
        joined = unicodedata.normalize("NFKC", _SEP.join(texts)).casefold()
        pieces = _NOT_WORD.sub(" ", joined).replace("_", " ").split(_SEP)
        if len(pieces) == len(texts):  # else normalisation made a separator: do it text by text
            return [p.encode().split() for p in pieces]
    return [normalize_for_dedup(t).encode().split() for t in texts]


def shingle_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """SHA-1 32-bit hashes (datasketch's `sha1_hash32`) of every caption's shingles, flat, plus the
    offsets of each caption's run (`len(texts) + 1` entries)."""
    counts = np.zeros(len(texts) + 1, np.int64)
    grams: list[bytes] = []
    for i, words in enumerate(normalized_words(texts)):
        g = _grams(words, n)
        counts[i + 1] = len(g)
        grams.extend(g)
    digests = b"".join([h.digest()[:4] for h in map(hashlib.sha1, grams)])
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32), np.cumsum(counts)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch pre-mixes input hashes (wrapping arithmetic)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine permutation parameters (a, b) for this num_perm and seed."""
    from datasketch import MinHash  # imported here: it pulls in scipy.integrate, 0.2 s

    m = MinHash(num_perm=num_perm, seed=seed)
    if m.scheme != "affine32":
        raise RuntimeError(f"datasketch's default MinHash scheme is {m.scheme!r}; this code follows affine32")
    a, b = m.permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(texts: list[str], n: int, num_perm: int, seed: int, chunk: int = 1024) -> np.ndarray:
    """MinHash signatures of the captions' shingle sets: a (len(texts), num_perm) uint32 array.

    Row i equals `MinHash(num_perm, seed)` updated with `shingles(texts[i], n)`; a caption without
    shingles gets datasketch's empty value (all 0xFFFFFFFF)."""
    hashes, offsets = shingle_hashes(texts, n)
    a, b = permutations(num_perm, seed)
    mixed = _fmix32(hashes)
    out = np.full((len(texts), num_perm), EMPTY, dtype=np.uint32)
    nonempty = np.diff(offsets) > 0
    buf = np.empty((0, num_perm), np.uint32)
    # Runs of whole captions of about `chunk` shingles keep the (shingles x num_perm) block in cache.
    first = 0
    while first < len(texts):
        last = int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1
        last = min(max(last, first + 1), len(texts))
        lo, hi = offsets[first], offsets[last]
        if hi > lo:
            if len(buf) < hi - lo:
                buf = np.empty((hi - lo, num_perm), np.uint32)
            values = buf[: hi - lo]
            np.multiply(mixed[lo:hi, None], a[None, :], out=values)  # wraps mod 2^32, as datasketch's
            np.add(values, b[None, :], out=values)
            keep = nonempty[first:last]
            out[first:last][keep] = np.minimum.reduceat(values, offsets[first:last][keep] - lo, axis=0)
        first = last
    return out


def mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (wrapping uint64 arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (row, band): a hash of the band index and the band's `rows` signature values.

    Two rows share a key (up to a 2^-64 collision, which verification removes) exactly when they agree
    on every value of that band, as in datasketch's MinHashLSH hash tables."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows exceed num_perm {sigs.shape[1]}")
    with np.errstate(over="ignore"):
        keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
        for band in range(bands):
            h = np.full(sigs.shape[0], np.uint64(0x9E3779B97F4A7C15) * np.uint64(band + 1), np.uint64)
            for j in range(band * rows, (band + 1) * rows):
                h = mix64(h ^ sigs[:, j].astype(np.uint64))
            keys[:, band] = h
    return keys


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values, row by row (datasketch's `MinHash.jaccard`)."""
    return np.count_nonzero(a == b, axis=1) / a.shape[1]


def _false_positive_area(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s**r) ** b, 0.0, threshold)[0]


def _false_negative_area(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: (1 - s**r) ** b, threshold, 1.0)[0]


@cache
def optimal_bands(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas of the LSH S-curve:
    the search datasketch's `MinHashLSH` does to choose its bands from a threshold and weights."""
    best, best_err = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = fp_weight * _false_positive_area(threshold, b, r) + fn_weight * _false_negative_area(
                threshold, b, r
            )
            if err < best_err:
                best, best_err = (b, r), err
    return best


def candidate_probability(jaccard: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two sets with this Jaccard similarity share at least one band."""
    return 1 - (1 - np.asarray(jaccard, dtype=float) ** rows) ** bands
