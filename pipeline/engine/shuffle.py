"""A hash shuffle of Arrow tables on Ray tasks: map tasks split their output by a key, reduce tasks each get
every row of their partitions and run a function over them.

Phase 2's near-duplicate steps are many small exchanges (band keys, candidate pairs, components); plain Ray
tasks keep the per-exchange cost to milliseconds where a Ray Data `repartition` costs seconds. The driver
only holds object references and the small stats dicts each reduce task returns next to its table.
Tasks go through the executor (`vlmforge.pipeline.engine.executor`), which runs them in the driver for jobs
too small to pay for starting task workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vlmforge.pipeline.dedup.minhash import mix64
from vlmforge.pipeline.engine.executor import get, resolve, submit

Refs = list  # of ray.ObjectRef, or of executor.Held in the driver


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition (0..partitions-1) of each integer key: a mixed hash, so sequential keys spread evenly."""
    with np.errstate(over="ignore"):
        mixed = mix64(keys.astype(np.int64, copy=False).view(np.uint64) ^ np.uint64(0x632BE59BD9B4E019))
    return (mixed % np.uint64(partitions)).astype(np.int64)


def column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-width column as a numpy array (zero-copy when it is one chunk without nulls)."""
    col = table.column(name)
    if col.num_chunks == 1:
        return col.chunk(0).to_numpy(zero_copy_only=False)
    return col.to_numpy()


def split(table: pa.Table, key: str, partitions: int) -> list[pa.Table]:
    """The rows of `table` for each partition of `key`, in their original order within a partition."""
    if partitions == 1:
        return [table]
    part = partition_of(column(table, key), partitions)
    small = part.astype(np.int16) if partitions < 2**15 else part  # numpy radix-sorts 16-bit ints
    order = np.argsort(small, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=partitions))])
    ordered = table.take(pa.array(order))
    return [ordered.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(partitions)]


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate tables of one schema into a table of one chunk per column."""
    return pa.concat_tables(tables).combine_chunks()


def _as_output(out: pa.Table | tuple[pa.Table, dict]) -> tuple[pa.Table, dict]:
    return out if isinstance(out, tuple) else (out, {})


def _map_split(fn: Callable[..., pa.Table], key: str, partitions: int, *args: Any) -> Any:
    parts = split(fn(*args), key, partitions)
    return parts[0] if partitions == 1 else tuple(parts)


def _reduce(fn: Callable[..., Any], kwargs: dict, *parts: pa.Table) -> tuple[pa.Table, dict]:
    return _as_output(fn(concat(parts), **{k: resolve(v) for k, v in kwargs.items()}))


def _map(fn: Callable[..., Any], kwargs: dict, *args: Any) -> tuple[pa.Table, dict]:
    return _as_output(fn(*args, **{k: resolve(v) for k, v in kwargs.items()}))


def identity(*tables: pa.Table) -> pa.Table:
    """The map function of a plain exchange of existing tables."""
    return concat(tables)


def shuffle(
    map_fn: Callable[..., pa.Table],
    map_args: Sequence[tuple],
    key: str,
    partitions: int,
    reduce_fn: Callable[..., pa.Table | tuple[pa.Table, dict]],
    **reduce_kwargs: Any,
) -> tuple[Refs, Refs]:
    """Run `map_fn(*args)` for each args tuple, hash-partition the rows by `key`, then run
    `reduce_fn(table_of_one_partition, **reduce_kwargs)` once per partition. A large keyword argument
    goes as a reference from `executor.put`: it travels once and each task fetches it.

    Returns references to the reduce outputs and to their stats dicts (empty unless `reduce_fn` returns
    a (table, stats) pair). Partition i always holds the keys `partition_of` maps to i.
    """
    splits = [submit(_map_split, map_fn, key, partitions, *args, num_returns=partitions) for args in map_args]
    if partitions == 1:
        splits = [[s] for s in splits]
    outs = [
        submit(_reduce, reduce_fn, reduce_kwargs, *[s[i] for s in splits], num_returns=2)
        for i in range(partitions)
    ]
    return [o[0] for o in outs], [o[1] for o in outs]


def exchange(
    refs: Refs, key: str, partitions: int, reduce_fn: Callable[..., Any], **reduce_kwargs: Any
) -> tuple[Refs, Refs]:
    """`shuffle` of tables already in the object store."""
    return shuffle(identity, [(r,) for r in refs], key, partitions, reduce_fn, **reduce_kwargs)


def map_each(refs: Sequence[Any], fn: Callable[..., Any], **kwargs: Any) -> tuple[Refs, Refs]:
    """Run `fn(ref_value, **kwargs)` on each reference (or tuple of references), one task each."""
    outs = [submit(_map, fn, kwargs, *(r if isinstance(r, tuple) else (r,)), num_returns=2) for r in refs]
    return [o[0] for o in outs], [o[1] for o in outs]


def gather_stats(stat_refs: Refs) -> list[dict]:
    """Wait for the stats dicts (this also waits for their tables)."""
    return get(stat_refs)
