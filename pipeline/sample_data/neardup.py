"""A MinHash-LSH guard that keeps the clean captions apart from each other (no near duplicates).

The curation drops near-duplicate captions with MinHash LSH, so clean rows must not be near duplicates of
each other, or the ground truth would call a row clean that the curation rightly drops. The guard checks two
shingle sets (word unigrams and character 5-grams of the normalised caption) with a low-threshold LSH
(32 bands x 4 rows, ~0.42) and rejects a caption whose exact Jaccard to any earlier one reaches the limit.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

from .captions import normalise_caption

NEAR_DUP_JACCARD = 0.6  # reject a clean caption this similar (either shingling) to an earlier clean one
N_PERM, BANDS = 128, 32
ESTIMATE_SLACK = 0.2  # candidates whose MinHash estimate is this far below the limit skip the exact check
_ROWS = N_PERM // BANDS
_rng = np.random.default_rng(20240601)
_A = _rng.integers(1, 2**32, N_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**32, N_PERM, dtype=np.uint64)
_MASK = np.uint64(0xFFFFFFFF)


def shingles(caption: str) -> tuple[frozenset[str], frozenset[str]]:
    """Word unigrams and character 5-grams of the normalised caption."""
    text = normalise_caption(caption)
    chars = frozenset(text[i : i + 5] for i in range(max(1, len(text) - 4)))
    return frozenset(text.split()), chars


def _signature(items: frozenset[str]) -> np.ndarray:
    hashed = np.fromiter((zlib.crc32(s.encode()) for s in items), dtype=np.uint64, count=len(items))
    return ((hashed[:, None] * _A + _B) & _MASK).min(axis=0)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if a or b else 1.0


def _bands(sig: np.ndarray) -> list[bytes]:
    return [bytes([b]) + sig[b * _ROWS : (b + 1) * _ROWS].tobytes() for b in range(BANDS)]


class NearDupIndex:
    """Captions added so far: shingle sets, MinHash signatures and LSH buckets, per shingling."""

    def __init__(self) -> None:
        self.sets: list[tuple[frozenset[str], ...]] = []
        self.signatures = np.zeros((2, 1024, N_PERM), dtype=np.uint64)
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list), defaultdict(list)]

    def _is_near(self, scheme: int, items: frozenset[str], sig: np.ndarray, bands: list[bytes]) -> bool:
        candidates = [i for band in bands for i in self.buckets[scheme].get(band, ())]
        if not candidates:
            return False
        idx = np.unique(np.array(candidates))
        estimate = (self.signatures[scheme, idx] == sig).mean(axis=1)
        likely = idx[estimate >= NEAR_DUP_JACCARD - ESTIMATE_SLACK]  # exact check only where it may matter
        return any(jaccard(items, self.sets[i][scheme]) >= NEAR_DUP_JACCARD for i in likely)

    def try_add(self, caption: str) -> bool:
        """Adds the caption unless an added one shares a band and reaches NEAR_DUP_JACCARD; True if added."""
        sets = shingles(caption)
        sigs = [_signature(items) for items in sets]
        bands = [_bands(sig) for sig in sigs]
        if any(self._is_near(s, sets[s], sigs[s], bands[s]) for s in range(len(sets))):
            return False
        n = len(self.sets)
        if n == self.signatures.shape[1]:
            self.signatures = np.concatenate([self.signatures, np.zeros_like(self.signatures)], axis=1)
        for scheme, sig in enumerate(sigs):
            self.signatures[scheme, n] = sig
            for band in bands[scheme]:
                self.buckets[scheme][band].append(n)
        self.sets.append(sets)
        return True
