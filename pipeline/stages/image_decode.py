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
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.config import ImageConfig
from pipeline.phash import phashes, thumbnail
from pipeline.stages.base import Stage, Verdict

ImageFile.LOAD_TRUNCATED_IMAGES = False
_KEEP_AS_IS = {"JPEG", "PNG", "WEBP"}


@dataclass
class ImageInfo:
    """What the image stage learned about one image."""

    reason: str | None = None
    detail: str | None = None
    image_format: str | None = None
    width: int | None = None
    height: int | None = None
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


class ImageDecode(Stage):
    """Rejects corrupt, truncated, unsupported, too small/large, bomb-sized and extreme-aspect images."""

    name = "image"

    def __init__(self, cfg: ImageConfig, phash: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.phash = phash
        self.formats = {f.upper() for f in cfg.formats}
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels

    def check_header(self, img: Image.Image) -> tuple[str, str] | None:
        """Checks on the declared format and size, before decoding."""
        cfg = self.cfg
        w, h = img.size
        if img.format not in self.formats:
            return "unsupported_format", str(img.format)
        if w * h > cfg.max_pixels:
            return "decompression_bomb", f"{w}x{h}"
        if max(w, h) > cfg.max_side:
            return "too_large", f"{w}x{h}"
        if min(w, h) < cfg.min_side:
            return "too_small", f"{w}x{h}"
        if max(w, h) / max(min(w, h), 1) > cfg.max_aspect_ratio:
            return "aspect_ratio", f"{w}x{h}"
        return None

    def inspect(self, data: bytes | None) -> ImageInfo:
        """Open, check and decode one image."""
        if not data:
            return ImageInfo("corrupt_image", "0 bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as e:
                return ImageInfo("decompression_bomb", str(e)[:120])
            except UnidentifiedImageError:
                return ImageInfo("corrupt_image", "not a recognised image format")
            except Exception as e:  # Pillow raises many types on hostile headers
                return ImageInfo(*_decode_error(e))
            try:
                bad = self.check_header(img)
                if bad:
                    return ImageInfo(*bad)
                normalise = (
                    img.mode != "RGB" or img.format not in _KEEP_AS_IS or getattr(img, "n_frames", 1) > 1
                )
                w, h = img.size  # before draft mode shrinks it
                if not normalise and img.format == "JPEG":
                    # Luma only, DCT-scaled: proves the stream is whole and is all the pHash needs.
                    img.draft("L", (self.cfg.decode_side, self.cfg.decode_side))
                self.stats.counters["decoded"] += 1
                img.load()
                if not normalise:
                    thumb = thumbnail(img) if self.phash else None
                    return ImageInfo(image_format=img.format, width=w, height=h, thumb=thumb)
                rgb = _to_rgb(img)
                out = io.BytesIO()
                rgb.save(out, format="JPEG", quality=self.cfg.reencode_quality)
                self.stats.counters["normalised"] += 1
                thumb = thumbnail(rgb) if self.phash else None
                return ImageInfo(
                    image_format="JPEG", width=rgb.width, height=rgb.height, data=out.getvalue(), thumb=thumb
                )
            except Image.DecompressionBombError as e:
                return ImageInfo("decompression_bomb", str(e)[:120])
            except Exception as e:
                return ImageInfo(*_decode_error(e))

    def decide(self, batch: pa.Table) -> Verdict:
        images = batch.column("image").to_pylist()
        infos = [self.inspect(b) for b in images]
        columns = {
            "image_format": pa.array([i.image_format for i in infos], pa.string()),
            "width": pa.array([i.width for i in infos], pa.int32()),
            "height": pa.array([i.height for i in infos], pa.int32()),
        }
        if self.phash:
            hashed = [k for k, i in enumerate(infos) if i.reason is None and i.thumb is not None]
            values = np.zeros(len(infos), np.uint64)
            if hashed:
                values[hashed] = phashes(np.stack([infos[k].thumb for k in hashed]))
            valid = np.zeros(len(infos), bool)
            valid[hashed] = True
            columns["phash"] = pa.array(values, pa.uint64(), mask=~valid)
        if any(i.data is not None for i in infos):
            columns["image"] = pa.array(
                [i.data if i.data is not None else b for i, b in zip(infos, images, strict=True)], pa.binary()
            )
        return Verdict(reasons=[i.reason for i in infos], details=[i.detail for i in infos], columns=columns)
