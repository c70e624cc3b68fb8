"""Caption MinHash signatures, computed in phase 1 for the global near-dup phase (which derives the LSH band
keys from them, so a new threshold or band shape needs no phase-1 rerun)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vlmforge.pipeline.config import CaptionNearDupConfig
from vlmforge.pipeline.dedup.minhash import signatures
from vlmforge.pipeline.filter.base import MeasuredStage, Verdict


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


class MinHashSignatures(MeasuredStage):
    """Attaches `minhash`, the caption's signature (all 0xFFFFFFFF for a caption without shingles); never
    rejects."""

    name = "minhash"
    measures = pa.schema([("row", pa.int64()), ("minhash", pa.binary())])

    def __init__(self, cfg: CaptionNearDupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def measure(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        texts = batch.column("caption").to_pylist()
        sigs = signatures([t or "" for t in texts], cfg.ngram, cfg.num_perm, cfg.seed)
        return pa.table({"minhash": signature_column(sigs)})

    def judge(self, batch: pa.Table, measured: pa.Table) -> Verdict:
        return Verdict(reasons=[None] * batch.num_rows, columns={"minhash": measured.column("minhash")})
