"""Webdataset tar shards as img2dataset writes them: `key.jpg`, `key.txt`, `key.json` per sample.

`tar_samples` walks a shard once and settles each sample's fate (the media member, the caption, the url
and the first reason it cannot be used); the image reader here and the video reader turn its samples
into rows of their schemas.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class TarSample:
    """One sample of a shard: its members as read, and the first reason it cannot be used."""

    key: str
    row_id: str = ""
    source: str = ""
    media: bytes | None = None
    media_ext: str | None = None
    caption_bytes: bytes | None = None
    caption: str | None = None
    url: str | None = None
    error: str | None = None
    detail: str | None = None

    def fail(self, error: str, detail: str) -> None:
        if self.error is None:
            self.error, self.detail = error, detail


@dataclass(frozen=True)
class MediaKind:
    """What a reader takes from a shard: the media members' extensions, their size cap and the name its
    rejection reasons carry (`missing_image`, `video_too_large_bytes` ...)."""

    name: str
    exts: frozenset[str]
    max_bytes: int


def tar_samples(part: InputPart, kind: MediaKind, max_caption_bytes: int) -> Iterator[TarSample]:
    """Every sample of one tar shard, in order, each with its row id and its reason if unusable.

    A repeated key becomes `key#n` (`duplicate_key`); unsafe paths and non-regular members, oversized
    members, a missing media member or caption and a caption that is not UTF-8 are reasons; a shard that
    breaks mid-stream fails its current sample with `corrupt_tar`, and one with nothing readable gives a
    single `corrupt_tar` sample for the shard. A store failure is raised: the job stops and a rerun resumes.
    """
    shard = location(part.path).name
    seen: dict[str, int] = {}
    sample: TarSample | None = None

    def settle(s: TarSample) -> TarSample:
        count = seen.get(s.key, 0)
        seen[s.key] = count + 1
        s.row_id = s.key if count == 0 else f"{s.key}#{count}"
        s.source = f"{shard}/{s.key}"
        if count:
            s.fail("duplicate_key", f"key {s.key} repeats in {shard}")
        if s.media is None:
            s.fail(f"missing_{kind.name}", f"no {kind.name} member")
        if s.caption_bytes is None:
            s.fail("missing_caption", "no .txt member")
        else:
            s.caption, bad = decode_caption(s.caption_bytes)
            if bad:
                s.fail(bad, "caption is not UTF-8")
        return s

    try:
        with location(part.path).open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                key, ext = split_key(member.name)
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield settle(sample)
                    sample = TarSample(key)
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    sample.fail("unsafe_path", f"member path {member.name!r}")
                elif not member.isfile():
                    sample.fail("unsafe_member", f"{member.name} is not a regular file")
                elif ext in kind.exts and sample.media is None:
                    if member.size > kind.max_bytes:
                        sample.fail(f"{kind.name}_too_large_bytes", f"{member.size} bytes")
                    else:
                        sample.media, sample.media_ext = tar.extractfile(member).read(), ext
                elif ext == "txt":
                    if member.size > max_caption_bytes:
                        sample.fail("caption_too_large", f"{member.size} bytes")
                    else:
                        sample.caption_bytes = tar.extractfile(member).read()
                elif ext == "json" and member.size <= _MAX_JSON_BYTES:
                    sample.url = _url_from_json(tar.extractfile(member).read())
    except StoreError:
        raise  # the store, not the shard, failed: the job stops and a rerun resumes
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        detail = f"{type(e).__name__}: {str(e)[:100]}"
        if sample is None:  # nothing readable at all: one row stands for the unreadable shard
            key = f"{part.name}#unreadable"
            yield TarSample(key, row_id=key, source=shard, error="corrupt_tar", detail=detail)
            return
        sample.fail("corrupt_tar", detail)
    if sample is not None:
        yield settle(sample)


def read_webdataset(part: InputPart, cfg: InputConfig, batch_rows: int) -> Iterator[pa.Table]:
    """Stream one tar shard as raw batches. Every sample becomes exactly one row."""
    out = RawBatches(batch_rows)
    kind = MediaKind("image", frozenset(IMAGE_EXTS), cfg.max_image_bytes)
    for s in tar_samples(part, kind, cfg.max_caption_bytes):
        if (batch := out.add(s.row_id, s.source, s.media, s.caption, s.url, s.error, s.detail)) is not None:
            yield batch
    if (batch := out.flush()) is not None:
        yield batch
