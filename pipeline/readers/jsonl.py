"""JSONL manifest + image folder: one JSON object per line naming an image path and a caption."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from vlmforge.common.storage import Location, location
from vlmforge.pipeline.config import InputConfig
from vlmforge.pipeline.readers.common import InputPart, RawBatches, read_image_file

_CHUNK = 1 << 20


def _lines(path: Location, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line) with lines longer than `limit` bytes skipped unread (as None)."""
    with path.open("rb") as f:
        lineno = 0
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            lineno += 1
            if len(line) > limit and not line.endswith(b"\n"):
                while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield lineno, None
                continue
            if line.strip():
                yield lineno, line


def read_jsonl(part: InputPart, cfg: InputConfig, batch_rows: int) -> Iterator[pa.Table]:
    """Stream one manifest file as raw batches; images are read from `root`."""
    out = RawBatches(batch_rows)
    path = location(part.path)
    root = location(part.root) if part.root else path.parent
    image_key = cfg.image_path_column or "image"
    for lineno, line in _lines(path, cfg.max_caption_bytes + 65_536):
        row_id, source = f"{path.stem}:{lineno}", f"{path.name}:{lineno}"
        if line is None:
            ready = out.add(row_id, source, error="line_too_large", detail=f"line {lineno} over the limit")
        else:
            ready = _row(out, line, row_id, source, root, image_key, cfg)
        if ready is not None:
            yield ready
    if (ready := out.flush()) is not None:
        yield ready


def _row(
    out: RawBatches, line: bytes, row_id: str, source: str, root: Location, image_key: str, cfg: InputConfig
) -> pa.Table | None:
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        return out.add(row_id, source, error="invalid_utf8", detail="line is not UTF-8")
    except (ValueError, RecursionError) as e:
        return out.add(row_id, source, error="bad_json", detail=f"{type(e).__name__}: {str(e)[:80]}")
    if not isinstance(record, dict):
        return out.add(row_id, source, error="bad_json", detail=f"line is a {type(record).__name__}")
    if cfg.id_column and record.get(cfg.id_column) is not None:
        row_id = str(record[cfg.id_column])
    caption = record.get(cfg.caption_column)
    rel = record.get(image_key)
    url = record.get("url") if isinstance(record.get("url"), str) else None
    if not isinstance(rel, str) or not rel:
        return out.add(
            row_id,
            source,
            caption=caption if isinstance(caption, str) else None,
            error="missing_image",
            detail=f"no {image_key!r} path",
        )
    image, error, detail = read_image_file(root, rel, cfg.max_image_bytes)
    if error is None and not isinstance(caption, str):
        error, detail = "missing_caption", f"no string {cfg.caption_column!r}"
    return out.add(row_id, source, image, caption if isinstance(caption, str) else None, url, error, detail)
