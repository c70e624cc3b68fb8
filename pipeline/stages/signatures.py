"""Caption MinHash signatures and their LSH band keys, computed in phase 1 for the global near-dup phase."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.config import CaptionNearDupConfig
from pipeline.minhash import band_keys, signatures
from pipeline.stages.base import Stage, Verdict


def signature_column(sigs: np.ndarray) -> pa.Array:
    """(n, num_perm) uint32 signatures as a binary column of num_perm*4 little-endian bytes per row."""
    n, width = sigs.shape[0], sigs.shape[1] * 4
    data = np.ascontiguousarray(sigs, dtype="<u4")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def signature_matrix(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """The inverse of `signature_column`: an (n, num_perm) uint32 array (a view when it can be)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise ValueError("signature column has nulls")
    n = len(column)
    if n == 0:
        return np.empty((0, num_perm), np.uint32)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + n + 1]
    if np.any(np.diff(offsets) != num_perm * 4):
        raise ValueError(f"signatures are not all {num_perm} values long")
    first = int(offsets[0]) // 4
    return np.frombuffer(column.buffers()[2], dtype="<u4")[first : first + n * num_perm].reshape(n, num_perm)


def band_column(keys: np.ndarray, has_shingles: np.ndarray) -> pa.Array:
    """Band keys as list<uint64>; a caption without shingles gets an empty list (it matches nothing)."""
    kept = keys[has_shingles]
    lengths = np.where(has_shingles, keys.shape[1], 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(kept.reshape(-1), pa.uint64()))


class MinHashSignatures(Stage):
    """Attaches `minhash` (the caption's signature) and `minhash_bands` (its LSH band keys); never rejects."""

    name = "minhash"

    def __init__(self, cfg: CaptionNearDupConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bands, self.rows = cfg.band_shape()

    def decide(self, batch: pa.Table) -> Verdict:
        cfg = self.cfg
        texts = batch.column("caption").to_pylist()
        sigs = signatures([t or "" for t in texts], cfg.ngram, cfg.num_perm, cfg.seed)
        has_shingles = (sigs != np.uint32(0xFFFFFFFF)).any(axis=1)
        return Verdict(
            reasons=[None] * batch.num_rows,
            columns={
                "minhash": signature_column(sigs),
                "minhash_bands": band_column(band_keys(sigs, self.bands, self.rows), has_shingles),
            },
        )
