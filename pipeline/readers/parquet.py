"""Parquet input: an image-bytes column (or an image-path column) and a caption column."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from vlmforge.common.storage import location, parquet_file, read_parquet_schema
from vlmforge.pipeline.config import InputConfig
from vlmforge.pipeline.readers.common import InputPart, RawBatches, decode_caption, read_image_file


def _image_bytes(value: object) -> bytes | None:
    # HF datasets store images as {"bytes": ..., "path": ...}.
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes | bytearray) else None


def _caption(value: object) -> tuple[str | None, str | None]:
    if isinstance(value, bytes):
        return decode_caption(value)
    return (value, None) if isinstance(value, str) else (None, None)


def parquet_columns(path: str, cfg: InputConfig) -> list[str]:
    """Columns of `path` that the reader needs; raises ValueError naming a missing one."""
    names = set(read_parquet_schema(path).names)
    wanted = [cfg.caption_column, cfg.image_path_column or cfg.image_column, cfg.id_column]
    for col, key in zip(
        wanted, ["caption_column", "image_column/image_path_column", "id_column"], strict=True
    ):
        if col is not None and col not in names:
            raise ValueError(f"{path}: input.{key} {col!r} not found; columns are {sorted(names)}")
    return [c for c in wanted if c is not None]


def read_parquet(part: InputPart, cfg: InputConfig, batch_rows: int) -> Iterator[pa.Table]:
    """Stream the part's row groups as raw batches."""
    out = RawBatches(batch_rows)
    path = location(part.path)
    root = location(part.root) if part.root else path.parent
    pf = parquet_file(path)
    row = part.first_row
    for batch in pf.iter_batches(
        batch_size=batch_rows, row_groups=list(part.row_groups), columns=parquet_columns(part.path, cfg)
    ):
        data = batch.to_pydict()
        n = batch.num_rows
        ids = data[cfg.id_column] if cfg.id_column else [None] * n
        for i in range(n):
            row_id = str(ids[i]) if ids[i] is not None else f"{path.stem}:{row + i}"
            caption, error = _caption(data[cfg.caption_column][i])
            detail = "caption is not UTF-8" if error else None
            image = None
            if cfg.image_path_column:
                rel = data[cfg.image_path_column][i]
                if isinstance(rel, str) and rel:
                    image, img_err, img_detail = read_image_file(root, rel, cfg.max_image_bytes)
                    error, detail = error or img_err, detail or img_detail
            else:
                image = _image_bytes(data[cfg.image_column][i])
            if error is None and image is None:
                error, detail = "missing_image", "no image bytes or path"
            if error is None and caption is None:
                error, detail = "missing_caption", "caption is null"
            if (
                ready := out.add(row_id, f"{path.name}:{row + i}", image, caption, None, error, detail)
            ) is not None:
                yield ready
        row += n
    if (ready := out.flush()) is not None:
        yield ready
