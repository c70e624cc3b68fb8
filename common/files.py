"""Atomic writes: every file appears under its final name only when complete, locally (temporary file and
rename) and in an object store (one upload of the finished file)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.common.storage import Location, local_temp, location, publish, read_parquet


@contextmanager
def atomic_path(path: str | Path | Location) -> Iterator[Path]:
    """A temporary local path for the block to write; published as `path` when the block succeeds,
    removed when it fails. For writers that take a file name (safetensors, tokenizers, text)."""
    path = location(path)
    tmp = local_temp(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)


class AtomicParquetWriter:
    """A ParquetWriter that writes to a temporary file and renames it into place on success."""

    def __init__(
        self, path: str | Path, schema: pa.Schema, compression: str = "zstd", row_group_rows: int = 1000
    ) -> None:
        self.path = location(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = local_temp(self.path)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.writer = pq.ParquetWriter(
            self.tmp, schema, compression=None if compression == "none" else compression
        )
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table.cast(self.schema), row_group_size=self.row_group_rows)
            self.rows += table.num_rows

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.writer.close()  # may itself fail (disk full): the temporary file must still go
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            publish(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_table_or_empty(path: str | Path, schema: pa.Schema) -> pa.Table:
    """A Parquet file's table, or an empty table of `schema` when the file does not exist."""
    return read_parquet(path) if location(path).is_file() else schema.empty_table()


def read_json(path: str | Path) -> dict | None:
    """Read a JSON file, or None when it does not exist."""
    path = location(path)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        return None


class ShardedParquetWriter:
    """Writes rows into numbered shards of at most `rows_per_shard` rows, each one atomic."""

    def __init__(
        self,
        directory: str | Path,
        prefix: str,
        schema: pa.Schema,
        rows_per_shard: int,
        compression: str = "zstd",
        row_group_rows: int = 1000,
    ) -> None:
        self.directory = location(directory)
        self.prefix = prefix
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.files: list[str] = []
        self.rows = 0
        self.current: AtomicParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        while table.num_rows:
            if self.current is None or self.current.rows >= self.rows_per_shard:
                self._rotate()
            take = min(table.num_rows, self.rows_per_shard - self.current.rows)
            self.current.write(table.slice(0, take))
            table = table.slice(take)

    def _rotate(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
        path = self.directory / f"{self.prefix}-{len(self.files):03d}.parquet"
        self.current = AtomicParquetWriter(path, self.schema, self.compression, self.row_group_rows)
        self.files.append(path.name)

    def __enter__(self) -> ShardedParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.current is not None:
            self.current.__exit__(exc_type, exc, tb)
