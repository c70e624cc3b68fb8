"""Pieces every reader shares: the work-unit description, a batch builder and safe file access."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import pyarrow as pa
import pyarrow.fs as pafs

from vlmforge.common.storage import Location, ObjectPath, StoreError
from vlmforge.pipeline.schema import RAW_SCHEMA


@dataclass(frozen=True)
class InputPart:
    """One unit of phase-1 work: a file, or a run of row groups of one file."""

    name: str
    path: str
    format: str
    root: str | None = None
    row_groups: tuple[int, ...] = field(default_factory=tuple)
    first_row: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["row_groups"] = list(self.row_groups)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputPart:
        return cls(**{**d, "row_groups": tuple(d.get("row_groups") or ())})


class RawBatches:
    """Collects raw rows and hands them out as Arrow batches of `batch_rows`."""

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self.rows: dict[str, list] = {f.name: [] for f in RAW_SCHEMA}

    def add(
        self,
        id: str,
        source: str,
        image: bytes | None = None,
        caption: str | None = None,
        url: str | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> pa.Table | None:
        """Add one row; return a full batch when one is ready."""
        row = {
            "id": id,
            "source": source,
            "url": url,
            "image": image,
            "caption": caption,
            "read_error": error,
            "read_detail": detail,
        }
        for k, v in row.items():
            self.rows[k].append(v)
        if len(self.rows["id"]) >= self.batch_rows:
            return self.flush()
        return None

    def flush(self) -> pa.Table | None:
        """Return the rows collected so far as a batch (None when empty)."""
        if not self.rows["id"]:
            return None
        table = pa.Table.from_pydict(self.rows, schema=RAW_SCHEMA)
        self.rows = {f.name: [] for f in RAW_SCHEMA}
        return table


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """UTF-8 caption bytes to text; returns (caption, error)."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "invalid_utf8"


@lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    """`os.path.realpath` of a directory, once per process: images share a few directories."""
    return os.path.realpath(path)


def read_image_file(root: Location, rel: str, max_bytes: int) -> tuple[bytes | None, str | None, str | None]:
    """Read an image under `root`, refusing paths (or symlinks) that lead outside it.

    Returns (bytes, error, detail).
    """
    if isinstance(root, ObjectPath):
        return _read_object(root, rel, max_bytes)
    real_root = _real_dir(str(root))
    head, name = os.path.split(os.path.join(real_root, rel))
    if name in ("", ".", ".."):
        target = os.path.realpath(os.path.join(head, name))
    else:  # resolve the directory (cached) and the file itself only when it is a link
        target = os.path.join(_real_dir(head), name)
        if os.path.islink(target):
            target = os.path.realpath(target)
    if not (target + os.sep).startswith(real_root.rstrip(os.sep) + os.sep):
        return None, "unsafe_path", f"{rel} leaves {real_root}"
    try:
        # O_NONBLOCK: a FIFO planted in the input must not hang the reader (regular files ignore it)
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None, "missing_image", f"{rel}: file not found"
    except OSError as e:
        return None, "unreadable_image", str(e)[:120]
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None, "missing_image", f"{rel}: not a regular file"
    if st.st_size > max_bytes:
        os.close(fd)
        return None, "image_too_large_bytes", f"{st.st_size} bytes"
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read(), None, None
        except OSError as e:
            return None, "unreadable_image", str(e)[:120]


def _read_object(root: ObjectPath, rel: str, max_bytes: int) -> tuple[bytes | None, str | None, str | None]:
    """`read_image_file` for an object-store root: the key must stay under the root's prefix."""
    key = posixpath.normpath(posixpath.join(root.key, rel))
    if rel.startswith("/") or not key.startswith(root.key.rstrip("/") + "/"):
        return None, "unsafe_path", f"{rel} leaves {root}"
    obj = ObjectPath(f"{root.scheme}://{key}")
    try:
        info = obj.info()
        if info.type != pafs.FileType.File:
            return None, "missing_image", f"{rel}: object not found"
        if (info.size or 0) > max_bytes:
            return None, "image_too_large_bytes", f"{info.size} bytes"
        return obj.read_bytes(), None, None
    except OSError as e:  # failed after the retries: the job stops naming the object; a rerun resumes
        raise StoreError(f"cannot read {obj}: {str(e).splitlines()[0][:200]}") from e
