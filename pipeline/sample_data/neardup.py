"""A MinHash-LSH guard that keeps the clean captions apart from each other (no near duplicates).

The curation drops near-duplicate captions with MinHash LSH, so clean rows must not be near duplicates of
each other, or the ground truth would call a row clean that the curation rightly drops. The guard checks two
shingle sets (word unigrams and character 5-grams of the normalised caption) with a low-threshold LSH
(32 bands x 4 rows, ~0.42) and rejects a caption whose exact Jaccard to any earlier one reaches the limit.
"""

from __future__ import annotations

import zlib
from array import array
from collections import defaultdict

import numpy as np

from .captions import normalise_caption

NEAR_DUP_JACCARD = 0.6  # reject a clean caption this similar (either shingling) to an earlier clean one
N_PERM, BANDS = 128, 32
ESTIMATE_SLACK = 0.2  # candidates whose MinHash estimate is this far below the limit skip the exact check
OVERLAP_SLACK = 1e-9  # the vectorised Jaccard screen keeps a little more than the exact check accepts
_ROWS = N_PERM // BANDS
_rng = np.random.default_rng(20240601)
_A = _rng.integers(1, 2**32, N_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**32, N_PERM, dtype=np.uint64)
_MASK = np.uint64(0xFFFFFFFF)


def shingles(caption: str) -> tuple[frozenset[str], frozenset[str]]:
    """Word unigrams and character 5-grams of the normalised caption."""
    return _shingles_of(normalise_caption(caption))


def _shingles_of(text: str) -> tuple[frozenset[str], frozenset[str]]:
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


class _TokenSets:
    """One shingling's sets of the added captions as token ids, flat, so that the overlap of a caption with
    many added ones is counted in a few array operations (character 5-grams: a large vocabulary)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.flat = np.zeros(1 << 14, dtype=np.int32)
        self.used = 0
        self.starts = np.zeros(1024, dtype=np.int64)
        self.sizes = np.zeros(1024, dtype=np.int64)
        self.n = 0
        self.mask = np.zeros(1024, dtype=bool)  # all False between calls

    def add(self, items: frozenset[str]) -> None:
        ids = [self.ids.setdefault(t, len(self.ids)) for t in items]
        while self.used + len(ids) > len(self.flat):
            self.flat = np.concatenate([self.flat, np.zeros_like(self.flat)])
        if self.n == len(self.starts):
            self.starts = np.concatenate([self.starts, np.zeros_like(self.starts)])
            self.sizes = np.concatenate([self.sizes, np.zeros_like(self.sizes)])
        while len(self.ids) > len(self.mask):
            self.mask = np.concatenate([self.mask, np.zeros_like(self.mask)])
        self.flat[self.used : self.used + len(ids)] = ids
        self.starts[self.n], self.sizes[self.n] = self.used, len(ids)
        self.used += len(ids)
        self.n += 1

    def overlaps(self, items: frozenset[str], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """|items & set i| and |set i| for each added set i in `idx` (non-empty)."""
        sizes = self.sizes[idx]
        ends = np.cumsum(sizes)
        offsets = ends - sizes
        positions = np.arange(ends[-1]) + np.repeat(self.starts[idx] - offsets, sizes)
        query = [i for i in map(self.ids.get, items) if i is not None]
        self.mask[query] = True
        hits = np.concatenate([[0], np.cumsum(self.mask[self.flat[positions]])])
        self.mask[query] = False
        return hits[ends] - hits[offsets], sizes


class _BitSets:
    """One shingling's sets of the added captions as rows of bits over its vocabulary, which widen as it
    grows; overlaps are popcounts (word unigrams: a few hundred words)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.bits = np.zeros((1024, 1), dtype="<u8")
        self.sizes = np.zeros(1024, dtype=np.int64)
        self.n = 0

    def _row(self, items: frozenset[str]) -> np.ndarray:
        mask = sum(1 << i for i in map(self.ids.get, items) if i is not None)
        return np.frombuffer(mask.to_bytes(8 * self.bits.shape[1], "little"), dtype="<u8")

    def add(self, items: frozenset[str]) -> None:
        for t in items:
            self.ids.setdefault(t, len(self.ids))
        rows, width = self.bits.shape
        if len(self.ids) > 64 * width or self.n == rows:
            shape = (2 * rows if self.n == rows else rows, max(width, -(-len(self.ids) // 64)))
            grown = np.zeros(shape, dtype="<u8")
            grown[:rows, :width] = self.bits
            self.bits = grown
            if self.n == rows:
                self.sizes = np.concatenate([self.sizes, np.zeros_like(self.sizes)])
        self.bits[self.n] = self._row(items)
        self.sizes[self.n] = len(items)
        self.n += 1

    def overlaps(self, items: frozenset[str], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """|items & set i| and |set i| for each added set i in `idx`."""
        inter = np.bitwise_count(self.bits[idx] & self._row(items)).sum(axis=1, dtype=np.int64)
        return inter, self.sizes[idx]


def _bucket() -> array:
    return array("i")


class NearDupIndex:
    """Captions added so far: shingle sets, MinHash signatures and LSH buckets, per shingling.

    A caption is near an added one when they share an LSH band, the MinHash estimate of their Jaccard is at
    least NEAR_DUP_JACCARD - ESTIMATE_SLACK and their exact Jaccard reaches NEAR_DUP_JACCARD. Band
    candidates are screened by exact Jaccard first, counted for all of them at once (word sets as bit rows,
    5-gram sets as token ids), since the buckets of common template words grow with the number of captions;
    the estimate and the set comparison then run on the few that pass: the same answers as estimating every
    candidate first. Whether a caption is near depends only on its normalised text
    and on the captions added, and the index only grows: a rejected text stays rejected, so it is
    remembered and not checked again (the pool of distinct short captions runs out at large n, and its
    captions are then drawn again and again)."""

    def __init__(self) -> None:
        self.sets: list[tuple[frozenset[str], ...]] = []
        self.signatures = np.zeros((2, 1024, N_PERM), dtype=np.uint64)
        self.buckets: list[dict[bytes, array]] = [defaultdict(_bucket), defaultdict(_bucket)]
        self.tokens = [_BitSets(), _TokenSets()]
        self.rejected: set[str] = set()  # normalised captions found near an added one

    def _is_near(self, scheme: int, items: frozenset[str], sig: np.ndarray, bands: list[bytes]) -> bool:
        members = b"".join(m for m in map(self.buckets[scheme].get, bands) if m)
        if not members:
            return False
        idx = np.frombuffer(members, dtype=np.int32)  # a caption in several of the bands is checked again
        inter, sizes = self.tokens[scheme].overlaps(items, idx)
        close = idx[inter >= (NEAR_DUP_JACCARD - OVERLAP_SLACK) * (len(items) + sizes - inter)]
        if not len(close):
            return False
        estimate = (self.signatures[scheme, close] == sig).mean(axis=1)
        likely = close[estimate >= NEAR_DUP_JACCARD - ESTIMATE_SLACK]  # exact check only where it may matter
        return any(jaccard(items, self.sets[i][scheme]) >= NEAR_DUP_JACCARD for i in likely)

    def try_add(self, caption: str) -> bool:
        """Adds the caption unless an added one shares a band and reaches NEAR_DUP_JACCARD; True if added."""
        text = normalise_caption(caption)
        if text in self.rejected:
            return False
        sets = _shingles_of(text)
        sigs: list[np.ndarray] = []
        bands: list[list[bytes]] = []
        for scheme, items in enumerate(sets):  # the second shingling only when the first finds no match
            sigs.append(_signature(items))
            bands.append(_bands(sigs[scheme]))
            if self._is_near(scheme, items, sigs[scheme], bands[scheme]):
                self.rejected.add(text)
                return False
        n = len(self.sets)
        if n == self.signatures.shape[1]:
            self.signatures = np.concatenate([self.signatures, np.zeros_like(self.signatures)], axis=1)
        for scheme, sig in enumerate(sigs):
            self.signatures[scheme, n] = sig
            for band in bands[scheme]:
                self.buckets[scheme][band].append(n)
            self.tokens[scheme].add(sets[scheme])
        self.sets.append(sets)
        return True
