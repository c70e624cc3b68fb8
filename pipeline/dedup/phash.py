"""64-bit DCT perceptual hashes of images, their Hamming distances, and bit-sampling LSH band keys.

The hash is built as imagehash's `phash`: a 32x32 greyscale thumbnail, a 2-D DCT-II, and one bit per
coefficient of the 8x8 lowest frequencies: above their median or not (row-major, first bit most
significant). The thumbnail is box-filtered rather than Lanczos-filtered: a third of the cost at decode
time, and measured equally robust (resized, re-encoded and cropped sample images land as close).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from vlmforge.pipeline.dedup.minhash import mix64

THUMB_SIDE = 32  # a thumbnail's side, in pixels
_LOW = 8
_BAND_SALT = 0xD6E8FEB86659FD93  # keeps image band keys apart from caption band keys


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(THUMB_SIDE)[:_LOW]  # only the low-frequency rows are needed
_BIT_WEIGHTS = (np.uint64(1) << np.arange(_LOW * _LOW - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


def thumbnail(img: Image.Image) -> np.ndarray:
    """The 32x32 greyscale pixels a pHash is computed from."""
    grey = img if img.mode == "L" else img.convert("L")
    return np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float64)


def phashes(thumbs: np.ndarray) -> np.ndarray:
    """pHashes (uint64) of a stack of 32x32 thumbnails, shape (n, 32, 32)."""
    low = np.einsum("ki,nij,lj->nkl", _DCT, thumbs, _DCT, optimize=True).reshape(len(thumbs), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def phash(img: Image.Image) -> int:
    """pHash of one image as a Python int."""
    return int(phashes(thumbnail(img)[None])[0])


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in; SWAR bit counting otherwise)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between two arrays of 64-bit hashes."""
    return popcount(np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)))


@cache
def band_positions(bands: int, bits: int, seed: int) -> np.ndarray:
    """For each band, `bits` distinct bit positions sampled at random (seeded): shape (bands, bits)."""
    if not 0 < bits <= 64:
        raise ValueError(f"band bits must be in 1..64, got {bits}")
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(64, size=bits, replace=False)) for _ in range(bands)])


def band_keys(hashes: np.ndarray, bands: int, bits: int, seed: int) -> np.ndarray:
    """One 64-bit key per (hash, band): a hash of the band's index and its sampled bits. Hashes `d` bits
    apart share a band with probability 1 - (1 - C(64-d, bits) / C(64, bits)) ** bands."""
    h = hashes.view(np.uint64)
    keys = np.empty((len(h), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band, positions in enumerate(band_positions(bands, bits, seed)):
            sampled = np.zeros(len(h), dtype=np.uint64)
            for j, p in enumerate(positions):
                sampled |= ((h >> np.uint64(p)) & np.uint64(1)) << np.uint64(j)
            keys[:, band] = mix64(mix64(sampled) ^ np.uint64(_BAND_SALT * (band + 1) % 2**64))
    return keys


def candidate_probability(distance: int, bands: int, bits: int) -> float:
    """Probability that two hashes `distance` bits apart share at least one band."""
    from math import comb

    return 1 - (1 - comb(64 - distance, bits) / comb(64, bits)) ** bands
