"""A hash shuffle of Arrow tables on Ray tasks: map tasks split their output by a key, reduce tasks each get
every row of their partitions and run a function over them.

Phase 2's near-duplicate steps are many small exchanges (band keys, candidate pairs, components); plain Ray
tasks keep the per-exchange cost to milliseconds where a Ray Data `repartition` costs seconds. The driver
only holds object references and the small stats dicts each reduce task returns next to its table.
Tasks go through the executor (`vlmforge.pipeline.engine.executor`), which runs them in the driver for jobs
too small to pay for starting task workers.

On Ray, inside `persisted(directory)` (the global phases run in it), every exchange is written to disk
instead of travelling as M x P small objects that the driver would own: each map task writes one Parquet
file with a row group per non-empty partition and returns only their row counts; each reduce task reads its
row groups from every map file and writes its output as one file. Exchange k of the phase lives in
`directory/<k>/`, with `_done.json` (outputs and stats) written when all its reduce outputs are; a rerun of
the phase after a killed driver takes finished exchanges from there instead of running them again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import pyarrow as pa

from vlmforge.common.files import AtomicParquetWriter, read_json, write_json
from vlmforge.common.storage import Location, location, parquet_file, rmtree
from vlmforge.pipeline.dedup.minhash import mix64
from vlmforge.pipeline.engine.executor import Held, Spilled, get, resolve, running_in_driver, submit

Refs = list  # of ray.ObjectRef, executor.Held (in the driver) or executor.Spilled (persisted)
_PERSISTED: ContextVar[tuple[Location, Iterator[int]] | None] = ContextVar("persisted", default=None)


@contextmanager
def persisted(directory: Location) -> Iterator[None]:
    """Inside this block, exchanges on Ray are persisted under `directory` (see the module's docstring)
    and reused by a rerun; the directory is removed when the block ends without an error."""
    token = _PERSISTED.set((location(directory), itertools.count()))
    try:
        yield
    finally:
        _PERSISTED.reset(token)
    rmtree(directory, ignore_errors=True)


def resuming() -> bool:
    """Whether this block's exchanges include finished ones from an earlier, killed run."""
    spill = _PERSISTED.get()
    return spill is not None and any(spill[0].glob("*/_done.json"))


def _next_exchange() -> Location | None:
    """The directory of the next persisted exchange, or None when exchanges stay in memory."""
    spill = _PERSISTED.get()
    if spill is None or running_in_driver():
        return None
    return spill[0] / f"{next(spill[1]):04d}"


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


def _map_spill(fn: Callable[..., pa.Table], key: str, partitions: int, path: str, *args: Any) -> int:
    """Write `fn(*args)` split by `key` to `path`, one row group per non-empty partition (the row count of
    every partition in the file's metadata); its rows."""
    table = fn(*(resolve(a) for a in args))
    parts = split(table, key, partitions)
    counts = json.dumps([piece.num_rows for piece in parts]).encode()
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), b"vlmforge.counts": counts})
    with AtomicParquetWriter(path, schema, row_group_rows=max(1, table.num_rows)) as w:
        for piece in parts:
            w.write(piece)
    return table.num_rows


def _reduce_spill(fn: Callable[..., Any], kwargs: dict, i: int, d: str, out: str, maps: int) -> dict:
    """Reduce partition `i` of the `maps` map files in `d` into `out`; its stats."""
    pieces, schema = [], None
    for m in range(maps):
        f = parquet_file(f"{d}/map-{m:05d}.parquet")
        schema = f.schema_arrow
        counts = json.loads(schema.metadata[b"vlmforge.counts"])
        if counts[i]:
            pieces.append(f.read_row_group(sum(1 for c in counts[:i] if c)))
    table = (concat(pieces) if pieces else schema.empty_table()).replace_schema_metadata(None)
    return _write_output(out, *_reduce(fn, kwargs, table))


def _write_output(out: str, result: pa.Table, stats: dict) -> dict:
    """Persist a task's output table (none when it has no columns); its stats."""
    if result.num_columns:
        with AtomicParquetWriter(out, result.schema, row_group_rows=max(1, result.num_rows)) as w:
            w.write(result)
    return {**stats, "_written": bool(result.num_columns)}


def _map_each_spill(fn: Callable[..., Any], kwargs: dict, out: str, *args: Any) -> dict:
    return _write_output(out, *_map(fn, kwargs, *(resolve(a) for a in args)))


def _refs(outputs: list[str], stats: list[dict]) -> tuple[Refs, Refs]:
    pairs = zip(outputs, stats, strict=True)
    tables = [Spilled(o) if s["_written"] else Held(pa.table({})) for o, s in pairs]
    return tables, [Held({k: v for k, v in s.items() if k != "_written"}) for s in stats]


def _finished(d: Location) -> tuple[Refs, Refs] | None:
    """The outputs and stats of exchange `d` when a run already finished it."""
    done = read_json(d / "_done.json")
    return None if done is None else _refs(done["outputs"], done["stats"])


def _finish(d: Location, outputs: list[str], stat_refs: Refs) -> tuple[Refs, Refs]:
    """Wait for exchange `d`, record it as finished and drop its consumed map files."""
    stats = get(stat_refs)
    write_json(d / "_done.json", {"outputs": outputs, "stats": stats})
    for f in d.glob("map-*.parquet"):
        f.unlink()
    return _refs(outputs, stats)


def _shuffle_persisted(
    d: Location, map_fn: Callable, map_args: Sequence[tuple], key: str, partitions: int, reduce_fn: Callable,
    kwargs: dict,
) -> tuple[Refs, Refs]:  # fmt: skip
    if (done := _finished(d)) is not None:
        return done
    if not map_args:
        return _finish(d, [], [])
    # The reduce tasks start once every map file is written: waiting here, rather than handing each reduce
    # task all M map references, keeps the driver's task state O(M + P) instead of O(M x P).
    get([
        submit(_map_spill, map_fn, key, partitions, str(d / f"map-{m:05d}.parquet"), *args)
        for m, args in enumerate(map_args)
    ])  # fmt: skip
    outputs = [str(d / f"out-{i:05d}.parquet") for i in range(partitions)]
    maps = len(map_args)
    stats = [submit(_reduce_spill, reduce_fn, kwargs, i, str(d), out, maps) for i, out in enumerate(outputs)]
    return _finish(d, outputs, stats)


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
    if (d := _next_exchange()) is not None:
        return _shuffle_persisted(d, map_fn, map_args, key, partitions, reduce_fn, reduce_kwargs)
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
    calls = [r if isinstance(r, tuple) else (r,) for r in refs]
    if (d := _next_exchange()) is not None:
        if (done := _finished(d)) is not None:
            return done
        outputs = [str(d / f"out-{i:05d}.parquet") for i in range(len(calls))]
        pairs = zip(outputs, calls, strict=True)
        return _finish(d, outputs, [submit(_map_each_spill, fn, kwargs, out, *call) for out, call in pairs])
    outs = [submit(_map, fn, kwargs, *call, num_returns=2) for call in calls]
    return [o[0] for o in outs], [o[1] for o in outs]


def gather_stats(stat_refs: Refs) -> list[dict]:
    """Wait for the stats dicts (this also waits for their tables)."""
    return get(stat_refs)
