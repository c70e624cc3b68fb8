"""Image decode and validation: each image is opened once, checked from its header, then decoded once.

Size, pixel-count and aspect checks use the declared header size, before any pixel is decoded, so a
decompression bomb costs nothing. JPEGs already in RGB are decoded in draft mode (DCT scaling, luma only) to
prove the bytes are whole, and keep their original bytes. Other modes (CMYK, palette, alpha, 16-bit,
greyscale) and animations are decoded in full, normalised to RGB and re-encoded as JPEG. When asked, the
64-bit perceptual hash for near-duplicate images is taken from the image as decoded here (no second decode).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFile, UnidentifiedImageError

from vlmforge.pipeline.config import ImageConfig
from vlmforge.pipeline.dedup.phash import phashes, thumbnail
from vlmforge.pipeline.filter.base import MeasuredStage, Verdict

ImageFile.LOAD_TRUNCATED_IMAGES = False
_KEEP_AS_IS = {"JPEG", "PNG", "WEBP"}


@dataclass
class ImageInfo:
    """What the image stage measured of one image: its header, then its decode when the header passed the
    checks in force when it was measured. `verdict` applies the current checks."""

    format: str | None = None  # as declared in the header; None when the bytes did not open
    width: int | None = None
    height: int | None = None
    reason: str | None = None  # the bytes did not open, or did not decode
    detail: str | None = None
    decoded: bool = False
    data: bytes | None = None  # set only when the image was normalised and re-encoded
    thumb: np.ndarray | None = None  # 32x32 greyscale thumbnail for the pHash, when asked for


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) > 255 else 0
        img = Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode_error(exc: BaseException) -> tuple[str, str]:
    msg = str(exc) or type(exc).__name__
    if "truncat" in msg.lower():
        return "truncated_image", msg[:120]
    return "corrupt_image", f"{type(exc).__name__}: {msg[:120]}"


class ImageDecode(MeasuredStage):
    """Rejects corrupt, truncated, unsupported, too small/large, bomb-sized and extreme-aspect images."""

    name = "image"
    measures = pa.schema(
        [
            ("row", pa.int64()),
            ("format", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("decoded", pa.bool_()),
            ("data", pa.binary()),
            ("phash", pa.uint64()),
        ]
    )

    def __init__(self, cfg: ImageConfig, phash: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.phash = phash
        self.formats = {f.upper() for f in cfg.formats}
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels

    def check_header(self, fmt: str | None, w: int, h: int) -> tuple[str, str] | None:
        """Checks on the declared format and size, before decoding."""
        cfg = self.cfg
        if fmt not in self.formats:
            return "unsupported_format", str(fmt)
        if w * h > cfg.max_pixels:
            return "decompression_bomb", f"{w}x{h}"
        if max(w, h) > cfg.max_side:
            return "too_large", f"{w}x{h}"
        if min(w, h) < cfg.min_side:
            return "too_small", f"{w}x{h}"
        if max(w, h) / max(min(w, h), 1) > cfg.max_aspect_ratio:
            return "aspect_ratio", f"{w}x{h}"
        return None

    def verdict(self, info: ImageInfo) -> tuple[str | None, str | None]:
        """(reason, detail) for a measured image under the current checks; (None, None) keeps it."""
        if info.format is None:
            return info.reason, info.detail
        return self.check_header(info.format, info.width, info.height) or (info.reason, info.detail)

    def inspect(self, data: bytes | None) -> ImageInfo:
        """Open one image, check its header and decode it when the header passes."""
        if not data:
            return ImageInfo(reason="corrupt_image", detail="0 bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as e:
                return ImageInfo(reason="decompression_bomb", detail=str(e)[:120])
            except UnidentifiedImageError:
                return ImageInfo(reason="corrupt_image", detail="not a recognised image format")
            except Exception as e:  # Pillow raises many types on hostile headers
                return ImageInfo(None, None, None, *_decode_error(e))
            w, h = img.size  # before draft mode shrinks it
            info = ImageInfo(img.format, w, h, decoded=True)
            if self.check_header(img.format, w, h):
                info.decoded = False
                return info
            try:
                normalise = (
                    img.mode != "RGB" or img.format not in _KEEP_AS_IS or getattr(img, "n_frames", 1) > 1
                )
                if not normalise and img.format == "JPEG":
                    # Luma only, DCT-scaled: proves the stream is whole and is all the pHash needs.
                    img.draft("L", (self.cfg.decode_side, self.cfg.decode_side))
                self.stats.counters["decoded"] += 1
                img.load()
                if not normalise:
                    info.thumb = thumbnail(img) if self.phash else None
                    return info
                rgb = _to_rgb(img)
                out = io.BytesIO()
                rgb.save(out, format="JPEG", quality=self.cfg.reencode_quality)
                self.stats.counters["normalised"] += 1
                info.width, info.height, info.data = rgb.width, rgb.height, out.getvalue()
                info.thumb = thumbnail(rgb) if self.phash else None
                return info
            except Image.DecompressionBombError as e:
                info.reason, info.detail = "decompression_bomb", str(e)[:120]
            except Exception as e:
                info.reason, info.detail = _decode_error(e)
            return info

    def measure(self, batch: pa.Table) -> pa.Table:
        infos = [self.inspect(b) for b in batch.column("image").to_pylist()]
        hashed = [k for k, i in enumerate(infos) if i.reason is None and i.thumb is not None]
        values = np.zeros(len(infos), np.uint64)
        if hashed:
            values[hashed] = phashes(np.stack([infos[k].thumb for k in hashed]))
        valid = np.zeros(len(infos), bool)
        valid[hashed] = True
        columns = {
            "format": pa.array([i.format for i in infos], pa.string()),
            "width": pa.array([i.width for i in infos], pa.int32()),
            "height": pa.array([i.height for i in infos], pa.int32()),
            "reason": pa.array([i.reason for i in infos], pa.string()),
            "detail": pa.array([i.detail for i in infos], pa.string()),
            "decoded": pa.array([i.decoded for i in infos], pa.bool_()),
            "data": pa.array([i.data for i in infos], pa.binary()),
            "phash": pa.array(values, pa.uint64(), mask=~valid),
        }
        return pa.table(columns)

    def usable(self, measured: pa.Table) -> np.ndarray:
        """A cached image serves unless its header failed a stricter run's checks that this run's pass."""
        rows = zip(
            *(measured.column(c).to_pylist() for c in ("format", "width", "height", "decoded")), strict=True
        )
        return np.array(
            [
                fmt is None or decoded or self.check_header(fmt, w, h) is not None
                for fmt, w, h, decoded in rows
            ],
            bool,
        )

    def judge(self, batch: pa.Table, measured: pa.Table) -> Verdict:
        names = ("format", "width", "height", "reason", "detail", "decoded")
        rows = zip(*(measured.column(c).to_pylist() for c in names), strict=True)
        verdicts = [self.verdict(ImageInfo(*row)) for row in rows]
        data = measured.column("data")
        columns = {
            "image_format": pc.if_else(pc.is_valid(data), "JPEG", measured.column("format")),
            "width": measured.column("width"),
            "height": measured.column("height"),
        }
        if self.phash:
            columns["phash"] = measured.column("phash")
        if data.null_count < len(data):
            columns["image"] = pc.if_else(pc.is_valid(data), data, batch.column("image"))
        return Verdict(reasons=[r for r, _ in verdicts], details=[d for _, d in verdicts], columns=columns)
