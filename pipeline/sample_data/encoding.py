"""Image bytes for the sample rows: JPEG, odd PNG modes, CMYK JPEG, corrupt and truncated files; pHash."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, UnidentifiedImageError

CLEAN_VARIANTS: tuple[str, ...] = ("png_rgba", "png_palette", "png_16bit", "png_grey", "jpeg_cmyk")
CORRUPT_VARIANTS: tuple[str, ...] = ("random_bytes", "html_page", "text", "json_error")
TRUNCATE_RANGE = (0.30, 0.70)


def encode(image: Image.Image, variant: str | None, rng: random.Random) -> tuple[bytes, str]:
    """Encodes an RGB image; returns (bytes, extension). variant None is a baseline JPEG (quality 85-90)."""
    buf = io.BytesIO()
    if variant is None or variant == "jpeg_cmyk":
        image = image.convert("CMYK") if variant else image
        image.save(buf, format="JPEG", quality=rng.randint(85, 90))
        return buf.getvalue(), "jpg"
    if variant == "png_rgba":
        image = image.convert("RGBA")
        image.putalpha(rng.randint(96, 255))
    elif variant == "png_palette":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=rng.choice((16, 64, 256)))
    elif variant == "png_16bit":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)
    elif variant == "png_grey":
        image = image.convert("L")
    else:
        raise ValueError(f"unknown image variant {variant!r}")
    image.save(buf, format="PNG")
    return buf.getvalue(), "png"


def truncate(data: bytes, rng: random.Random) -> bytes:
    """The first 30-70% of a file's bytes, as an interrupted download leaves it."""
    return data[: int(len(data) * rng.uniform(*TRUNCATE_RANGE))]


def corrupt_bytes(variant: str, rng: random.Random) -> bytes:
    """Bytes that are no image at all (random noise or a text/HTML error body) for a .jpg member."""
    rid = f"{rng.getrandbits(64):016x}"
    if variant == "random_bytes":
        data = rng.randbytes(rng.randint(200, 6000))
        return b"\x00" + data if data[:2] in (b"\xff\xd8", b"\x89P") else data
    if variant == "html_page":
        return (
            "<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>"
            f"<p>The requested URL was not found on this server.</p><!-- request {rid} --></body></html>\n"
        ).encode()
    if variant == "text":
        return f"Access denied. You do not have permission to view this resource. Reference #{rid}\n".encode()
    if variant == "json_error":
        return f'{{"error": {{"code": 403, "message": "Forbidden", "request_id": "{rid}"}}}}'.encode()
    raise ValueError(f"unknown corrupt variant {variant!r}")


def is_unidentified(data: bytes) -> bool:
    """True when PIL cannot tell what image format the bytes are (the intended corrupt_image defect)."""
    try:
        Image.open(io.BytesIO(data)).close()
    except UnidentifiedImageError:
        return True
    return False


def is_truncated_jpeg(data: bytes) -> bool:
    """True when PIL opens the header but cannot decode the pixels (the intended truncated_image defect)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return False
            im.load()
    except OSError:
        return True
    return False


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a careful decoder makes it: 16-bit grey scaled down (PIL's convert clips it), alpha
    composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((pixels >> (8 if pixels.max(initial=0) > 255 else 0)).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decoded_phash(data: bytes) -> int:
    """pHash of encoded image bytes, decoded as the curation decodes them."""
    with Image.open(io.BytesIO(data)) as image:
        return phash(to_rgb(image))


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash like imagehash.phash (32x32 grey, DCT-II, 8x8 low band > its median), with
    the box-filtered thumbnail that pipeline/dedup/phash.py uses."""
    small = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")
