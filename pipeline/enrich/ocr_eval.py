"""A real-font OCR evaluation set: real text in fonts from Debian packages over photographs, slightly tilted.

Shared by tests/pipeline/enrich/test_ocr_eval.py and benchmarks/ocr_engines.py. Nothing here is drawn from
the project's own sample data:
- text: consecutive 1-5 word spans of the licence texts every Debian system ships
  (/usr/share/common-licenses: GPL, Apache, MPL ... real English prose with names, numbers and capitals);
- fonts: every TrueType file of fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf and
  fonts-crosextra-carlito found on the machine (sans, serif, mono, condensed, bold, italic);
- backgrounds: random crops, scales and flips of the two photographs that ship inside scikit-learn
  (`sklearn.datasets.load_sample_images`: a temple and a flower), so text sits on real texture and edges;
- the text colour is picked against the photo under the strokes (luma contrast >= `MIN_CONTRAST` with
  `READABLE_SHARE` of those pixels; a new spot is drawn until one exists), sometimes with a 1 px shadow,
  rotated up to `MAX_TILT` degrees, saved as JPEG 70-95.
A share of cases (`blank_share`) are photo crops with no text, to count spurious text.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LICENSE_DIR = Path("/usr/share/common-licenses")
FONT_DIRS = tuple(
    Path("/usr/share/fonts/truetype") / d for d in ("dejavu", "liberation", "freefont", "crosextra")
)
SIZES = (12, 16, 20, 24, 32, 40, 48)  # font sizes in px (the em size passed to FreeType)
MIN_CONTRAST = 70.0
READABLE_SHARE = 0.95
MAX_TILT = 4.0
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Case:
    image: bytes
    text: str  # "" for a blank case
    font: str
    size: int
    box: tuple[int, int, int, int] | None = None  # the text's ink box (x0, y0, x1, y1); None when blank


@cache
def _spans_source() -> tuple[str, ...]:
    words: list[str] = []
    for path in sorted(LICENSE_DIR.glob("*")):
        if path.is_file() and path.name[0].isupper():
            text = path.read_text("utf-8", "replace")
            words += [w for w in _TOKEN.findall(text) if any(ch.isalnum() for ch in w) and len(w) <= 20]
    if not words:
        raise FileNotFoundError(f"no licence texts in {LICENSE_DIR} (Debian's base-files)")
    return tuple(words)


@cache
def fonts() -> tuple[Path, ...]:
    """The TrueType fonts found (sorted); the Debian packages above must be installed."""
    found = sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob("*.ttf"))
    if not found:
        raise FileNotFoundError("no fonts: apt-get install fonts-dejavu-core fonts-liberation")
    return tuple(found)


@cache
def _photos() -> tuple[Image.Image, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(Image.fromarray(a) for a in load_sample_images().images)


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    photo = rng.choice(_photos())
    scale = rng.uniform(max(width / photo.width, height / photo.height, 0.35), 1.6)
    w, h = max(width, round(photo.width * scale)), max(height, round(photo.height * scale))
    img = photo.resize((w, h), Image.Resampling.BILINEAR)
    x, y = rng.randint(0, w - width), rng.randint(0, h - height)
    img = img.crop((x, y, x + width, y + height))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _phrase(rng: random.Random) -> str:
    words = _spans_source()
    n = rng.randint(1, 5)
    start = rng.randrange(len(words) - n)
    return " ".join(words[start : start + n])


def _readable_colour(rng: random.Random, behind: np.ndarray) -> tuple[tuple[int, int, int] | None, float]:
    """A text colour whose luma differs by >= MIN_CONTRAST from READABLE_SHARE of the photo's pixels under
    the strokes (what makes text readable to a person), or (None, 0) after 50 tries."""
    for _ in range(50):
        fg = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        luma = 0.299 * fg[0] + 0.587 * fg[1] + 0.114 * fg[2]
        if behind.size == 0 or np.mean(np.abs(behind - luma) >= MIN_CONTRAST) >= READABLE_SHARE:
            return fg, luma
    return None, 0.0


def render(seed: int, size: int | None = None, blank: bool = False) -> Case:
    """One JPEG case; `size` picks the font size (else one of SIZES)."""
    rng = random.Random(seed)
    size = size or rng.choice(SIZES)
    font_path = rng.choice(fonts())
    font = ImageFont.truetype(str(font_path), size)
    text = "" if blank else _phrase(rng)
    while text and font.getlength(text) > 600 and " " in text:
        text = text.rsplit(" ", 1)[0]
    left, top, right, bottom = font.getbbox(text or "x")
    pad = 3
    layer = Image.new("L", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad), 0)
    if text:
        ImageDraw.Draw(layer).text((pad - left, pad - top), text, fill=255, font=font)
    layer = layer.rotate(rng.uniform(-MAX_TILT, MAX_TILT), resample=Image.Resampling.BICUBIC, expand=True)
    width = max(160, layer.width + rng.randint(16, 200))
    height = max(80, layer.height + rng.randint(16, 160))
    for _attempt in range(20):  # a spot and colour where the strokes stand out from the photo under them
        image = _background(rng, width, height)
        xy = (rng.randint(0, width - layer.width), rng.randint(0, height - layer.height))
        if not text:
            break
        under = np.asarray(image.convert("L").crop((*xy, xy[0] + layer.width, xy[1] + layer.height)), float)
        behind = under[np.asarray(layer) > 128]
        fg, luma = _readable_colour(rng, behind)
        if fg is not None:
            break
    if text and fg is None:  # no readable spot in 20 draws: black or white, whichever stands out more
        luma = 0.0 if np.median(behind) > 127 else 255.0
        fg = (int(luma),) * 3
    if text:
        if rng.random() < 0.3:  # a soft shadow of the opposite polarity, as on captioned photos
            shade = (0, 0, 0) if luma > float(np.median(behind)) else (255, 255, 255)
            blur = layer.filter(ImageFilter.GaussianBlur(1))
            image.paste(Image.new("RGB", layer.size, shade), (xy[0] + 1, xy[1] + 1), blur)
        image.paste(Image.new("RGB", layer.size, fg), xy, layer)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=rng.randint(70, 95))
    ink = layer.getbbox() if text else None
    box = (xy[0] + ink[0], xy[1] + ink[1], xy[0] + ink[2], xy[1] + ink[3]) if ink else None
    return Case(buf.getvalue(), text, font_path.stem, size, box)


def cases(n: int, seed: int = 0, blank_share: float = 0.0) -> list[Case]:
    """`n` cases from `seed`: font sizes cycle through SIZES; every 1/blank_share-th case is blank."""
    every = round(1 / blank_share) if blank_share else 0
    return [
        render(seed * 1_000_003 + i, SIZES[i % len(SIZES)], blank=bool(every) and i % every == every - 1)
        for i in range(n)
    ]
