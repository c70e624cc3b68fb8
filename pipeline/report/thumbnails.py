"""Small JPEG thumbnails for the report's gallery, made only for a bounded, deterministic sample of rows.

`sample_order` ranks ids by a stable hash, so the same id is picked in every run (two runs of different
thresholds show the same pairs where both kept them). `gallery_thumbnails` picks at most `per_reason`
rejected rows per reason per part and thumbnails only those.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

THUMB_SIDE = 96
THUMB_QUALITY = 75
# Declared sizes above this are not thumbnailed: a header can promise billions of pixels (bombs).
MAX_THUMB_SOURCE_PIXELS = 40_000_000


def sample_order(ids: Sequence[str | None]) -> np.ndarray:
    """Indices of `ids` ordered by a stable 32-bit hash of each id (ties by position)."""
    keys = np.fromiter((zlib.crc32((i or "").encode()) for i in ids), dtype=np.uint64, count=len(ids))
    return np.argsort(keys, kind="stable")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def make_thumbnail(data: bytes | None, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY) -> bytes | None:
    """A JPEG at most `side` px on its long side, or None when the bytes are not a decodable image."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0 or w * h > MAX_THUMB_SOURCE_PIXELS:
                return None
            img.draft("RGB", (side, side))  # JPEG: decode at 1/2..1/8 scale
            img.load()
            img = ImageOps.exif_transpose(_to_rgb(img))
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            return buf.getvalue()
    except Exception:  # hostile or broken bytes: no thumbnail, never a crash
        return None


def gallery_thumbnails(
    batch: pa.Table, reasons: Sequence[str], taken: Counter, per_reason: int, side: int = THUMB_SIDE
) -> pa.Array:
    """Thumbnails for up to `per_reason - taken[reason]` rows of each reason in `batch` (null elsewhere).

    `batch` holds rejected rows with `id` and `image`; `taken` counts rows already sampled (in this part)
    and is updated. A sampled row whose image does not decode still counts, so the work stays bounded.
    """
    n = batch.num_rows
    out: list[bytes | None] = [None] * n
    if per_reason <= 0 or n == 0 or "image" not in batch.column_names:
        return pa.array(out, pa.binary())
    ids = batch.column("id").to_pylist()
    images = batch.column("image")
    for i in sample_order(ids):
        reason = reasons[i]
        if taken[reason] >= per_reason:
            continue
        taken[reason] += 1
        out[i] = make_thumbnail(images[int(i)].as_py(), side)
    return pa.array(out, pa.binary())
