"""Video-text inputs: webdataset shards holding `key.mp4|webm|mkv|mov` + `key.txt`, Parquet with a column of
video bytes (`video.column`) or paths (`video.path_column`), JSONL naming a video path.

Rows follow VIDEO_RAW_SCHEMA: the raw columns (with `image` null) plus `video` (the encoded clip) and
`video_ext`. As with images, every sample becomes exactly one row and a pair that cannot be assembled
carries a `read_error` (`missing_video`, `video_too_large_bytes`, `corrupt_tar` ...), which phase 1's read
stage counts as a rejection. Clips are not opened here: the video stage decodes them in the workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from vlmforge.common.storage import Location, location, parquet_file
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.readers.common import InputPart, read_image_file
from vlmforge.pipeline.readers.jsonl import _lines
from vlmforge.pipeline.readers.webdataset import MediaKind, tar_samples
from vlmforge.pipeline.schema import VIDEO_RAW_SCHEMA

VIDEO_EXTS = {"mp4", "webm", "mkv", "mov", "m4v", "avi"}


class VideoBatches:
    """Collects raw video rows and hands them out as Arrow batches of `batch_rows`."""

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self.rows: list[dict] = []

    def add(self, **row: object) -> pa.Table | None:
        """Add one row (VIDEO_RAW_SCHEMA names; absent ones are null); return a full batch when ready."""
        self.rows.append(row)
        return self.flush() if len(self.rows) >= self.batch_rows else None

    def flush(self) -> pa.Table | None:
        if not self.rows:
            return None
        table = pa.Table.from_pylist(self.rows, schema=VIDEO_RAW_SCHEMA)
        self.rows = []
        return table


def _path_error(error: str | None) -> str | None:
    """The shared file reader's image-named errors, renamed for videos."""
    return error.replace("image", "video") if error else None


def read_video_webdataset(part: InputPart, cfg: CurateConfig, batch_rows: int) -> Iterator[pa.Table]:
    """One tar shard of clips as raw batches."""
    out = VideoBatches(batch_rows)
    kind = MediaKind("video", frozenset(VIDEO_EXTS), cfg.video.max_bytes)
    for s in tar_samples(part, kind, cfg.input.max_caption_bytes):
        row = {"id": s.row_id, "source": s.source, "caption": s.caption, "url": s.url, "video": s.media}
        row |= {"video_ext": s.media_ext, "read_error": s.error, "read_detail": s.detail}
        if (batch := out.add(**row)) is not None:
            yield batch
    if (batch := out.flush()) is not None:
        yield batch


def _record_row(
    record: dict, row_id: str, source: str, root: Location, cfg: CurateConfig, data: object = None
) -> dict:
    """A raw row from one Parquet/JSONL record: the bytes in `video.column` or the file `video.path_column`
    names."""
    vc = cfg.video
    if cfg.input.id_column and record.get(cfg.input.id_column) is not None:
        row_id = str(record[cfg.input.id_column])
    caption = record.get(cfg.input.caption_column)
    row: dict = {"id": row_id, "source": source, "caption": caption if isinstance(caption, str) else None}
    if isinstance(record.get("url"), str):
        row["url"] = record["url"]
    video, error, detail = None, None, None
    if vc.path_column:
        rel = record.get(vc.path_column)
        if not isinstance(rel, str) or not rel:
            error, detail = "missing_video", f"no {vc.path_column!r} path"
        else:
            video, error, detail = read_image_file(root, rel, vc.max_bytes)
            error = _path_error(error)
            row["video_ext"] = rel.rsplit(".", 1)[-1].lower() if "." in rel else None
    else:
        if isinstance(data, dict):  # a struct column {bytes, path}, as Hugging Face writes media
            data = data.get("bytes")
        if not data:
            error, detail = "missing_video", f"no bytes in {vc.column!r}"
        elif not isinstance(data, bytes | bytearray):
            error, detail = "missing_video", f"{vc.column!r} holds a {type(data).__name__}, not bytes"
        elif len(data) > vc.max_bytes:
            error, detail = "video_too_large_bytes", f"{len(data)} bytes"
        else:
            video = bytes(data)
    if error is None and row["caption"] is None:
        error, detail = "missing_caption", f"no string {cfg.input.caption_column!r}"
    return {**row, "video": video, "read_error": error, "read_detail": detail}


def read_video_parquet(part: InputPart, cfg: CurateConfig, batch_rows: int) -> Iterator[pa.Table]:
    """The part's row groups of a Parquet file with a video bytes or path column."""
    path = location(part.path)
    root = location(part.root) if part.root else path.parent
    pf = parquet_file(path)
    names = set(pf.schema_arrow.names)
    media = cfg.video.path_column or cfg.video.column
    wanted = [c for c in (cfg.input.caption_column, media, cfg.input.id_column, "url") if c]
    missing = [c for c in wanted[:2] if c not in names]
    if missing:
        from vlmforge.common.errors import InputError

        raise InputError(
            f"{path}: no column {missing[0]!r} (input.caption_column / video.column|path_column)"
        )
    columns = [c for c in wanted if c in names]
    out = VideoBatches(batch_rows)
    row = part.first_row
    for group in part.row_groups or range(pf.metadata.num_row_groups):
        for batch in pf.iter_batches(batch_size=256, row_groups=[group], columns=columns):
            for record in batch.to_pylist():
                data = record.get(cfg.video.column) if not cfg.video.path_column else None
                r = _record_row(record, f"{path.stem}:{row}", f"{path.name}:{row}", root, cfg, data)
                row += 1
                if (ready := out.add(**r)) is not None:
                    yield ready
    if (ready := out.flush()) is not None:
        yield ready


def read_video_jsonl(part: InputPart, cfg: CurateConfig, batch_rows: int) -> Iterator[pa.Table]:
    """A JSONL manifest naming one video path (`video.path_column`, else `video`) and caption per line."""
    path = location(part.path)
    root = location(part.root) if part.root else path.parent
    if not cfg.video.path_column:
        cfg = cfg.model_copy(update={"video": cfg.video.model_copy(update={"path_column": "video"})})
    out = VideoBatches(batch_rows)
    for lineno, line in _lines(path, cfg.input.max_caption_bytes + 65_536):
        row_id, source = f"{path.stem}:{lineno}", f"{path.name}:{lineno}"
        try:
            record = json.loads(line) if line is not None else None
        except (ValueError, RecursionError) as e:
            r = {"id": row_id, "source": source, "read_error": "bad_json", "read_detail": str(e)[:80]}
        else:
            if line is None:
                r = {"id": row_id, "source": source, "read_error": "line_too_large", "read_detail": None}
            elif not isinstance(record, dict):
                r = {"id": row_id, "source": source, "read_error": "bad_json", "read_detail": "not an object"}
            else:
                r = _record_row(record, row_id, source, root, cfg)
        if (ready := out.add(**r)) is not None:
            yield ready
    if (ready := out.flush()) is not None:
        yield ready


VIDEO_READERS = {
    "webdataset": read_video_webdataset,
    "parquet": read_video_parquet,
    "jsonl": read_video_jsonl,
}


def read_video_part(part: InputPart, cfg: CurateConfig, batch_rows: int) -> Iterator[pa.Table]:
    """Stream one part of a video input as raw batches (VIDEO_RAW_SCHEMA)."""
    return VIDEO_READERS[part.format](part, cfg, batch_rows)
