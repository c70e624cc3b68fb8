"""Where files live. A local path stays a `pathlib.Path`; an object-store URI (`s3://bucket/prefix`,
`gs://bucket/prefix`) becomes an `ObjectPath`, which offers the small part of the Path API the pipeline
uses, over `pyarrow.fs`. `file://` URIs are local paths.

S3 credentials, region and endpoint come from the standard variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`), as boto3 reads them.
Object stores have no rename: a file is written once, complete, under its final name (a local temporary
file uploaded in one request), so a crash never exposes a partial object.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, Union

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vlmforge.common.errors import InputError

SCHEMES = ("s3", "gs")
RETRIES = 5  # attempts per request: a dropped connection is retried before the job fails naming the object


def is_remote(path: Any) -> bool:
    return isinstance(path, ObjectPath) or (
        isinstance(path, str) and any(path.startswith(f"{s}://") for s in SCHEMES)
    )


def location(path: str | os.PathLike) -> Location:
    """The Path (local) or ObjectPath (object store) that `path` names."""
    if isinstance(path, ObjectPath | Path):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if is_remote(text):
        return ObjectPath(text)
    return Path(text)


@cache
def filesystem(scheme: str) -> pafs.FileSystem:
    """One pyarrow filesystem per scheme and process, configured from the environment."""
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return pafs.S3FileSystem(
            endpoint_override=endpoint or None,
            region=region,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=RETRIES),
            connect_timeout=5,
            request_timeout=60,
        )
    if scheme == "gs":
        return pafs.GcsFileSystem()
    raise ValueError(f"unsupported storage scheme {scheme}://")


class StoreError(OSError):
    """A store request that failed after its retries (not bad data: the job stops, a rerun resumes)."""


@dataclass(frozen=True)
class Stat:
    st_size: int
    st_mtime_ns: int


class ObjectPath:
    """A file or prefix in an object store, with the Path methods the pipeline uses."""

    def __init__(self, uri: str) -> None:
        scheme, _, rest = uri.partition("://")
        if scheme not in SCHEMES:
            raise ValueError(f"not an object-store URI: {uri}")
        self.scheme = scheme
        self.key = posixpath.normpath(rest).strip("/") if rest.strip("/") else ""
        if not self.key:
            raise InputError(f"{uri}: no bucket in the URI")

    # -- names -------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(other) == str(self)

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __reduce__(self) -> tuple:
        return ObjectPath, (str(self),)

    def __truediv__(self, name: str | os.PathLike) -> ObjectPath:
        return ObjectPath(f"{self}/{os.fspath(name)}")

    def joinpath(self, *names: str) -> ObjectPath:
        out = self
        for n in names:
            out = out / n
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> ObjectPath:
        head = posixpath.dirname(self.key)
        return ObjectPath(f"{self.scheme}://{head or self.key}")

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem(self.scheme)

    # -- queries -----------------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def stat(self) -> Stat:
        info = self.info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return Stat(info.size or 0, info.mtime_ns or 0)

    def _listing(self, recursive: bool) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.key, allow_not_found=True, recursive=recursive))

    def _child(self, info: pafs.FileInfo) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{info.path}")

    def iterdir(self) -> Iterator[ObjectPath]:
        return (self._child(i) for i in self._listing(recursive=False))

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Entries whose path below this one matches `pattern` segment by segment (`*` stays in a segment)."""
        depth = pattern.count("/") + 1
        for info in self._listing(recursive=depth > 1 or "**" in pattern):
            rel = info.path[len(self.key) + 1 :]
            if rel.count("/") + 1 == depth and fnmatch.fnmatchcase(rel, pattern):
                yield self._child(info)

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        for info in self._listing(recursive=True):
            if fnmatch.fnmatchcase(posixpath.basename(info.path), pattern):
                yield self._child(info)

    # -- reads and writes --------------------------------------------------------------------------------
    def open(self, mode: str = "rb", encoding: str | None = None) -> IO:
        if mode in ("rb", "r"):
            try:
                raw = _RawReader(self.fs.open_input_file(self.key), str(self))
            except OSError as e:
                raise StoreError(f"cannot read {self}: {_first_line(e)}") from e
            f = io.BufferedReader(raw, buffer_size=1 << 20)
            return io.TextIOWrapper(f, encoding=encoding or "utf-8") if mode == "r" else f
        raise ValueError(f"{self}: objects are written whole (write_bytes, atomic_path), not opened {mode!r}")

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.key) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: Path) -> None:
        """Copy a finished local file here in one upload."""
        pafs.copy_files(str(local), self.key, destination_filesystem=self.fs)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Prefixes exist as soon as an object is under them."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if self.info().type == pafs.FileType.Directory:
            self.fs.delete_dir_contents(self.key, missing_dir_ok=True)


class _RawReader(io.RawIOBase):
    """A pyarrow random-access file as a raw stream, so `io.BufferedReader` adds readline and peek."""

    def __init__(self, f: Any, uri: str) -> None:
        self.f, self.uri = f, uri

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self.f.read(len(b))
        except OSError as e:
            raise StoreError(f"cannot read {self.uri}: {_first_line(e)}") from e
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()


Location = Union[Path, ObjectPath]  # noqa: UP007 (a runtime alias)


def rmtree(path: Location, ignore_errors: bool = False) -> None:
    """Remove a directory (or prefix) and everything under it."""
    if isinstance(path, ObjectPath):
        path.rmtree()
    else:
        shutil.rmtree(path, ignore_errors=ignore_errors)


def local_temp(path: Location) -> Path:
    """A temporary local file name for writing what will become `path`: beside it when local (so a rename
    publishes it), in the temp directory when it will be uploaded."""
    if isinstance(path, ObjectPath):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".upload")
        os.close(fd)
        return Path(name)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def publish(tmp: Path, path: Location) -> None:
    """Make the finished temporary file `tmp` appear under `path` in one step."""
    if isinstance(path, ObjectPath):
        try:
            path.upload(tmp)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


def parquet_dataset(paths: list[Location], schema: Any = None) -> Any:
    """A pyarrow dataset over Parquet files that are all local or all in one store."""
    import pyarrow.dataset as pads

    if paths and isinstance(paths[0], ObjectPath):
        return pads.dataset([p.key for p in paths], format="parquet", schema=schema, filesystem=paths[0].fs)
    return pads.dataset([str(p) for p in paths], format="parquet", schema=schema)


def tree_bytes(path: Location) -> int:
    """The bytes of the files under `path` (0 when it does not exist)."""
    if isinstance(path, ObjectPath):
        return sum(i.size or 0 for i in path._listing(recursive=True) if i.type == pafs.FileType.File)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def parquet_file(path: str | os.PathLike) -> pq.ParquetFile:
    loc = location(path)
    return pq.ParquetFile(loc.fs.open_input_file(loc.key) if isinstance(loc, ObjectPath) else loc)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> Any:
    loc = location(path)
    if isinstance(loc, ObjectPath):
        return pq.read_table(loc.key, columns=columns, filesystem=loc.fs)
    return pq.read_table(loc, columns=columns)


def read_parquet_schema(path: str | os.PathLike) -> Any:
    loc = location(path)
    if isinstance(loc, ObjectPath):
        with loc.fs.open_input_file(loc.key) as f:
            return pq.read_schema(f)
    return pq.read_schema(loc)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else repr(e)


def describe_failure(uri: str, exc: BaseException) -> str:
    """One line naming `uri` and why the store refused it."""
    text = str(exc)
    causes = {
        "NO_SUCH_BUCKET": "the bucket does not exist",
        "NETWORK_CONNECTION": "cannot connect to the endpoint"
        f" {os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL') or '(AWS default)'}",
        "ACCESS_DENIED": "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        "INVALID_ACCESS_KEY_ID": "the access key id is not known: check AWS_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH": "the secret key does not match: check AWS_SECRET_ACCESS_KEY",
        "InvalidAccessKeyId": "the access key id is not known: check AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "the secret key does not match: check AWS_SECRET_ACCESS_KEY",
        "AccessDenied": "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    }
    first_line = text.splitlines()[0][:200] if text else repr(exc)
    cause = next((c for k, c in causes.items() if k in text), first_line)
    return f"{uri}: {cause}"


def check_bucket(path: ObjectPath) -> None:
    """Fail with one line naming the URL and the cause when the bucket cannot be reached."""
    try:
        info = path.fs.get_file_info(path.bucket)
        path.fs.get_file_info(pafs.FileSelector(path.key, allow_not_found=True))
    except OSError as e:
        raise InputError(describe_failure(str(path), e)) from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{path}: the bucket {path.bucket!r} does not exist")
