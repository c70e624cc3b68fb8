"""Which rows of which curated shards a split uses, built a row group at a time and kept compactly.

Per shard the index keeps one bit per row (selected or not, ``np.packbits``) and the selected rows of each
row group: 1 bit a row instead of an int64 row number, and no per-row Python objects kept while building. The
held-out rule (``is_heldout``, a BLAKE2b of the id) is evaluated a slice of a row group at a time
(``heldout_mask``), so the split is the one every other stage uses.
Readers ask for the k-th to l-th selected rows of a shard (``ShardIndex.rows_of``); only the row groups
they span are unpacked.

Held in memory only while building: one row group's ids, one shard's selection as bytes, and for a
stage-2 subset the score column of the whole curated set (its percentile is exact).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.training.config import DataSection, SourceSection, SubsetSection

# ------------------------------------------------------------------------------------ the held-out rule

_CHUNK = 8192  # ids hashed per slice of a row group: a bounded number of Python strings at once


def is_heldout(row_id: str, fraction: float) -> bool:
    """A stable split by id: the same rows are held out in every stage and on every machine."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def heldout_mask(ids: pa.Array | pa.ChunkedArray, fraction: float) -> np.ndarray:
    """``is_heldout`` of every id of an Arrow string array, a slice of `_CHUNK` ids at a time (so only that
    many Python strings exist at once)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise ValueError(f"the id column must hold strings, not {ids.type}")
    if ids.null_count:
        raise ValueError(f"the id column has {ids.null_count} null id(s)")
    out = np.empty(len(ids), dtype=bool)
    for lo in range(0, len(ids), _CHUNK):
        chunk = ids.slice(lo, _CHUNK).to_pylist()
        out[lo : lo + len(chunk)] = [is_heldout(x, fraction) for x in chunk]
    return out


# ----------------------------------------------------------------------------------------------- the index


class _ShardRows(Sequence):
    """``index.rows[k]``: shard k's selected row numbers, unpacked when asked for."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        return self.index.rows_of(k)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.index.rows_of(k) for k in range(len(self)))


@dataclass
class ShardIndex:
    """Which rows of which shards a split uses, and where each shard's row groups start.

    Per shard: ``selected``, one bit per row (``np.packbits``, little bit order), ``counts``, the selected
    rows of each row group, ``group_starts``, each row group's first row, ``num_rows``.

    A mix (``data.sources``) holds every source's shards, ``files`` named ``source/shard``, and each
    source's weight; an epoch then interleaves the sources by weight (``epoch_rows``)."""

    root: Path
    files: list[str]
    selected: list[np.ndarray]
    counts: list[np.ndarray]
    group_starts: list[np.ndarray]
    num_rows: list[int]
    note: str = ""
    paths: list[Path] = field(default_factory=list)  # each shard's file (default: root / name)
    sources: list[str] = field(default_factory=lambda: ["data"])
    weights: list[float] = field(default_factory=lambda: [1.0])
    file_source: list[int] = field(default_factory=list)  # each shard's source (default: all 0)

    def __post_init__(self) -> None:
        self.paths = self.paths or [self.root / f for f in self.files]
        self.file_source = self.file_source or [0] * len(self.files)
        # selected rows before each row group of each shard, and each shard's selected rows
        self._before = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in self.counts]
        self.sizes = np.array([int(b[-1]) for b in self._before], dtype=np.int64)

    @property
    def rows(self) -> _ShardRows:
        """Each shard's selected row numbers, ascending (unpacked per shard, on demand)."""
        return _ShardRows(self)

    @property
    def total(self) -> int:
        return int(self.sizes.sum())

    def source_rows(self, source: int) -> int:
        return int(self.sizes[np.asarray(self.file_source, dtype=np.int64) == source].sum())

    def rows_of(self, shard: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Row numbers of the `lo`-th to (`hi` - 1)-th selected rows of `shard`; only the row groups
        they lie in are unpacked."""
        before, size = self._before[shard], int(self.sizes[shard])
        hi = size if hi is None else min(hi, size)
        if lo >= hi:
            return np.zeros(0, dtype=np.int64)
        g0 = int(np.searchsorted(before, lo, side="right")) - 1
        g1 = int(np.searchsorted(before, hi - 1, side="right")) - 1
        starts = self.group_starts[shard]
        first = int(starts[g0])
        end = int(starts[g1 + 1]) if g1 + 1 < len(starts) else self.num_rows[shard]
        bits = np.unpackbits(self.selected[shard][first // 8 : (end + 7) // 8], bitorder="little")
        rows = np.flatnonzero(bits[first % 8 : first % 8 + end - first]) + first
        return rows[lo - before[g0] : hi - before[g0]].astype(np.int64)

    @property
    def fingerprint(self) -> str:
        """Changes when the shards or the selected rows change (a resume then refuses)."""
        h = hashlib.sha256()
        for k, name in enumerate(self.files):
            h.update(name.encode())
            before = self._before[k]
            for g in range(len(self.counts[k])):  # the int64 row numbers, a row group at a time
                h.update(self.rows_of(k, int(before[g]), int(before[g + 1])).tobytes())
        return h.hexdigest()[:16]

    def part(self, shards: list[int], **kw) -> ShardIndex:
        """An index of some of these shards (their selections shared, not copied)."""
        return ShardIndex(
            self.root,
            [self.files[k] for k in shards],
            [self.selected[k] for k in shards],
            [self.counts[k] for k in shards],
            [self.group_starts[k] for k in shards],
            [self.num_rows[k] for k in shards],
            paths=[self.paths[k] for k in shards],
            **kw,
        )

    @property
    def nbytes(self) -> int:
        """Memory the selection takes (bitmaps, per-row-group counts and starts)."""
        arrays = [*self.selected, *self.counts, *self.group_starts, *self._before]
        return int(sum(a.nbytes for a in arrays))


def build_index(
    curated_dir: str | Path, split: str, heldout_fraction: float, subset: SubsetSection | None = None
) -> ShardIndex:
    """Index the shards of a curated output for the "train" or "heldout" split (subset: train only)."""
    data_dir = Path(curated_dir) / "data"
    files = sorted(p.name for p in data_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"data.path: no Parquet shards in {data_dir}")
    use_subset = subset is not None and split == "train"
    keeps: list[np.ndarray] = []  # per shard: a bool per row while the subset's threshold is unknown
    scores, group_starts, num_rows, in_split = [], [], [], 0
    for name in files:
        parquet = pq.ParquetFile(data_dir / name)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        group_starts.append(np.cumsum([0, *sizes[:-1]]).astype(np.int64))
        num_rows.append(int(sum(sizes)))
        columns = ["id"] + ([subset.column] if use_subset else [])
        missing = set(columns) - set(parquet.schema_arrow.names)
        if missing:
            raise ValueError(f"data.subset.column: {data_dir / name} has no column {sorted(missing)[0]!r}")
        keep = np.empty(num_rows[-1], dtype=bool)
        score = np.empty(num_rows[-1] if use_subset else 0, dtype=np.float64)
        for g, start in enumerate(group_starts[-1]):
            table = parquet.read_row_group(g, columns=columns)
            try:
                held = heldout_mask(table.column("id"), heldout_fraction)
            except ValueError as e:
                raise ValueError(f"data.path: {data_dir / name}, row group {g}: {e}") from e
            keep[start : start + table.num_rows] = held == (split == "heldout")
            if use_subset:
                column = table.column(subset.column).to_numpy(zero_copy_only=False)
                score[start : start + table.num_rows] = column.astype(np.float64)
        parquet.close()
        in_split += int(keep.sum())
        keeps.append(keep if use_subset else _pack(keep, group_starts[-1]))
        scores.append(score)
    note = f"{split}: {in_split} of {sum(num_rows)} rows"
    if use_subset:
        every = np.concatenate(scores)
        known = every[~np.isnan(every)]
        if known.size == 0:
            raise ValueError(f"data.subset.column: {subset.column!r} has no values in {data_dir}")
        threshold = float(np.percentile(known, subset.percentile))
        del every, known
        keeps = [
            _pack(keep & (score >= threshold), starts)
            for keep, score, starts in zip(keeps, scores, group_starts, strict=True)
        ]
        note += (
            f", {sum(int(c.sum()) for _, c in keeps)} with {subset.column} >= {threshold:.4g} "
            f"(percentile {subset.percentile:g})"
        )
    selected, counts = [b for b, _ in keeps], [c for _, c in keeps]
    return ShardIndex(data_dir, files, selected, counts, group_starts, num_rows, note)


def _pack(keep: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A shard's bitmap and its selected rows per row group."""
    ends = [*starts[1:], len(keep)]
    counts = np.array([int(keep[s:e].sum()) for s, e in zip(starts, ends, strict=True)], dtype=np.int64)
    return np.packbits(keep, bitorder="little"), counts


def build_mix_index(
    sources: list[SourceSection], split: str, heldout_fraction: float, subset: SubsetSection | None = None
) -> ShardIndex:
    """One index over the shards of several curated outputs (``data.sources``); the held-out split keeps
    each source's own held-out rows (evaluation reports them apart, ``source_indexes``)."""
    parts = []
    for src in sources:
        try:
            parts.append(build_index(src.path, split, heldout_fraction, subset))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"data.sources ({src.label}): {e}") from e
    empty = [s.label for s, p in zip(sources, parts, strict=True) if p.total == 0 and split == "train"]
    if empty:
        raise ValueError(f"data.sources: {empty[0]!r} has no {split} rows")
    return ShardIndex(
        Path("."),
        [f"{s.label}/{f}" for s, p in zip(sources, parts, strict=True) for f in p.files],
        [b for p in parts for b in p.selected],
        [c for p in parts for c in p.counts],
        [g for p in parts for g in p.group_starts],
        [n for p in parts for n in p.num_rows],
        "; ".join(f"{s.label} (weight {s.weight:g}) {p.note}" for s, p in zip(sources, parts, strict=True)),
        paths=[path for p in parts for path in p.paths],
        sources=[s.label for s in sources],
        weights=[s.weight for s in sources],
        file_source=[i for i, p in enumerate(parts) for _ in p.files],
    )


def data_index(data: DataSection, split: str) -> ShardIndex:
    """The "train" or "heldout" index of data.path or of the data.sources mix (subset: train only)."""
    subset = data.subset if split == "train" else None
    if data.sources:
        return build_mix_index(data.sources, split, data.heldout_fraction, subset)
    return build_index(data.path, split, data.heldout_fraction, subset)


def source_indexes(index: ShardIndex) -> dict[str, ShardIndex]:
    """Each source's part of a mix, as an index of its own (a single-source index maps to itself)."""
    if len(index.sources) == 1:
        return {index.sources[0]: index}
    return {
        name: index.part([k for k, s in enumerate(index.file_source) if s == i])
        for i, name in enumerate(index.sources)
    }
