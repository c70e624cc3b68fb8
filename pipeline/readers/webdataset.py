"""Webdataset tar shards as img2dataset writes them: `key.jpg`, `key.txt`, `key.json` per sample."""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator

import pyarrow as pa

from vlmforge.common.storage import StoreError, location
from vlmforge.pipeline.config import InputConfig
from vlmforge.pipeline.readers.common import InputPart, RawBatches, decode_caption

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
_MAX_JSON_BYTES = 1_000_000


def split_key(name: str) -> tuple[str, str]:
    """Webdataset convention: the key is the path up to the first dot of the file name."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


def _url_from_json(data: bytes) -> str | None:
    if len(data) > _MAX_JSON_BYTES:
        return None
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return url if isinstance(url, str) else None


class _Sample:
    def __init__(self, key: str) -> None:
        self.key = key
        self.image: bytes | None = None
        self.caption: bytes | None = None
        self.url: str | None = None
        self.error: str | None = None
        self.detail: str | None = None

    def fail(self, error: str, detail: str) -> None:
        if self.error is None:
            self.error, self.detail = error, detail


def read_webdataset(part: InputPart, cfg: InputConfig, batch_rows: int) -> Iterator[pa.Table]:
    """Stream one tar shard as raw batches. Every sample becomes exactly one row."""
    out = RawBatches(batch_rows)
    shard = location(part.path).name
    seen: dict[str, int] = {}
    sample: _Sample | None = None

    def emit(s: _Sample) -> pa.Table | None:
        count = seen.get(s.key, 0)
        seen[s.key] = count + 1
        row_id = s.key if count == 0 else f"{s.key}#{count}"
        error, detail = s.error, s.detail
        caption = None
        if error is None and count:
            error, detail = "duplicate_key", f"key {s.key} repeats in {shard}"
        if error is None and s.image is None:
            error, detail = "missing_image", "no image member"
        if error is None and s.caption is None:
            error, detail = "missing_caption", "no .txt member"
        if s.caption is not None:
            caption, bad = decode_caption(s.caption)
            if error is None and bad:
                error, detail = bad, "caption is not UTF-8"
        return out.add(row_id, f"{shard}/{s.key}", s.image, caption, s.url, error, detail)

    try:
        with location(part.path).open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                key, ext = split_key(member.name)
                if sample is None or key != sample.key:
                    if sample is not None and (batch := emit(sample)) is not None:
                        yield batch
                    sample = _Sample(key)
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    sample.fail("unsafe_path", f"member path {member.name!r}")
                    continue
                if not member.isfile():
                    sample.fail("unsafe_member", f"{member.name} is not a regular file")
                    continue
                if ext in IMAGE_EXTS and sample.image is None:
                    if member.size > cfg.max_image_bytes:
                        sample.fail("image_too_large_bytes", f"{member.size} bytes")
                        continue
                    sample.image = tar.extractfile(member).read()
                elif ext == "txt":
                    if member.size > cfg.max_caption_bytes:
                        sample.fail("caption_too_large", f"{member.size} bytes")
                        continue
                    sample.caption = tar.extractfile(member).read()
                elif ext == "json" and member.size <= _MAX_JSON_BYTES:
                    sample.url = _url_from_json(tar.extractfile(member).read())
    except StoreError:
        raise  # the store, not the shard, failed: the job stops and a rerun resumes
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if sample is not None:
            sample.fail("corrupt_tar", f"{type(e).__name__}: {str(e)[:100]}")
            if (batch := emit(sample)) is not None:
                yield batch
            sample = None
        else:
            # Nothing readable at all: one row stands for the unreadable shard.
            if (
                batch := out.add(
                    f"{part.name}#unreadable",
                    shard,
                    error="corrupt_tar",
                    detail=f"{type(e).__name__}: {str(e)[:100]}",
                )
            ) is not None:
                yield batch
    if sample is not None and (batch := emit(sample)) is not None:
        yield batch
    if (batch := out.flush()) is not None:
        yield batch
