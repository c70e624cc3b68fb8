"""Small builders shared by tests: images in many encodings and raw Arrow batches."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image

from vlmforge.pipeline.schema import RAW_SCHEMA

ROOT = Path(__file__).resolve().parents[1]  # the repository

# `vlmforge curate` with the default recipe, as a subprocess (tests that kill or starve it)
CURATE = [
    sys.executable, "-m", "vlmforge.pipeline.cli", "curate", "configs/curate/default.yaml", "--no-progress",
]  # fmt: skip


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(size: tuple[int, int] = (128, 96), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A JPEG with a gradient, so different colours give different bytes."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = color[0]
    arr[..., 1] = np.linspace(0, color[1], w, dtype=np.uint8)[None, :]
    arr[..., 2] = color[2]
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def raw_batch(rows: list[dict]) -> pa.Table:
    """A RAW_SCHEMA batch from partial row dicts."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in RAW_SCHEMA}
    for i, r in enumerate(rows):
        cols["id"][i] = r.get("id", f"row{i}")
        cols["source"][i] = r.get("source", "test")
    return pa.Table.from_pydict(cols, schema=RAW_SCHEMA)


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A tar with the given (name, bytes) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def outcomes(out: Path) -> tuple[list[str], dict[str, dict]]:
    """A curated output's kept ids and its rejected rows by id."""
    kept = pads.dataset(out / "data").to_table(columns=["id"])["id"].to_pylist()
    rejected = pads.dataset(out / "rejected").to_table().to_pylist()
    return kept, {r["id"]: r for r in rejected}
