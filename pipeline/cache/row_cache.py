"""Per-row results of an expensive pass (a model call, an image decode) over one input part, kept across runs.

A row seen by an earlier run with the same pass config is looked up by its key; only rows never seen (or whose
cached result is not enough for this run) are computed. `save` adds the new results to the file, so a cache
grows as thresholds loosen and never shrinks as they tighten.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.common.storage import Location, location, read_parquet


class RowCache:
    """The cached results (`schema`, including the `key` column) of one pass over one part."""

    def __init__(self, path: str | Location, schema: pa.Schema, key: str) -> None:
        self.path, self.schema, self.key = location(path), schema, key
        self.cached = read_parquet(self.path).cast(schema) if self.path.is_file() else schema.empty_table()
        self.fresh: list[pa.Table] = []
        self.hits = 0

    def results(
        self,
        batch: pa.Table,
        compute: Callable[[pa.Table], pa.Table],
        usable: Callable[[pa.Table], np.ndarray] | None = None,
    ) -> pa.Table:
        """The results for every row of `batch`, in its order: cached ones, and `compute(rows)` for the rest.

        `compute` gets the batch's rows without a usable cached result and returns their results (the
        schema's columns; the key is taken from the batch). `usable(cached rows)` may refuse cached rows,
        e.g. an image that a stricter run never decoded.
        """
        idx = pc.index_in(batch[self.key], value_set=self.cached[self.key])
        seen = pc.is_valid(idx).to_numpy(zero_copy_only=False)
        if seen.any() and usable is not None:
            seen[seen] &= usable(self.cached.take(idx.drop_null()))
        old = self.cached.take(pc.filter(idx, pa.array(seen)))
        new = pa.table({}) if seen.all() else compute(batch.filter(pa.array(~seen)))
        parts = [old]
        if new.num_rows:
            if self.key in new.column_names:
                new = new.drop_columns([self.key])
            keyed = new.append_column(self.key, batch[self.key].filter(pa.array(~seen)))
            parts.append(keyed.select(self.schema.names).cast(self.schema))
            self.fresh.append(parts[-1])
        self.hits += int(seen.sum())
        order = np.argsort(np.concatenate([np.flatnonzero(seen), np.flatnonzero(~seen)]), kind="stable")
        return pa.concat_tables(parts).take(pa.array(order))

    def save(self) -> None:
        """Add this run's new results to the file (they replace cached rows of the same key)."""
        if not self.fresh:
            return
        fresh = pa.concat_tables(self.fresh)
        kept = self.cached.filter(pc.invert(pc.is_in(self.cached[self.key], value_set=fresh[self.key])))
        with AtomicParquetWriter(self.path, self.schema) as w:
            w.write(pa.concat_tables([kept, fresh]))
