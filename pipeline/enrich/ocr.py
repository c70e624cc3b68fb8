"""OCR enrichment: the text in an image, read by tesseract and appended to captions.

Tesseract runs in-process through tesserocr (its C API; PyPI's wheel bundles libtesseract 5.5, the language
data comes from Debian's tesseract-ocr-eng): one engine per worker, its model loaded once and reused for every
image, fed raw greyscale bytes. Where tesserocr or the language data is missing (or `ocr.engine:
pytesseract`), pytesseract starts one tesseract process per image, as before (~20x slower per image).

Each image is decoded once to greyscale. The cheap detector (`text_detect`) finds text-like
lines; with `detect` on, images without any skip tesseract. The lines also shape what tesseract sees (in both
modes, so a detected image gets the same tesseract input either way): the band of rows holding them, scaled
so the text is about `text_px` tall, as the strokes' contrast against their local background drawn black on
white (no gradients or shading left; light text on dark becomes dark on light). Without a detected line
(detect off) the whole image goes in, upscaled 2x. Words under `min_confidence`, and tokens without a letter
or digit, are dropped. A bad image or a tesseract failure or timeout never raises: it is counted, the row
gets null.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import statistics
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytesseract
from PIL import Image

from vlmforge.common.errors import JobError
from vlmforge.pipeline.config import OcrConfig
from vlmforge.pipeline.enrich.text_detect import TextLine, ink, text_lines, to_grey

FALLBACK_UPSCALE = 2.0  # when no line was detected (detect off), text height is unknown
MIN_SCALE = 0.25  # large text is downscaled towards `text_px`, by this factor at most
INK_GAIN = 2  # stroke contrast x this = darkness of the stroke on white
CROP_MARGIN = 1.0  # rows kept above and below the detected lines, in heights of the tallest line


TESSDATA_DIRS = (  # where Debian and source builds put the language data
    "/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata", "/usr/share/tessdata",
    "/usr/local/share/tessdata",
)


@cache
def tessdata_dir() -> str | None:
    """The directory holding tesseract's *.traineddata: $TESSDATA_PREFIX, the tesseract binary's own, or a
    known Debian path; None when there is none."""
    candidates = [os.environ.get("TESSDATA_PREFIX", "")]
    if shutil.which("tesseract"):
        try:
            out = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=30)
            found = re.search(r'"([^"]+)"', out.stdout + out.stderr)
            candidates.append(found.group(1) if found else "")
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += TESSDATA_DIRS
    return next((str(Path(c)) for c in candidates if c and any(Path(c).glob("*.traineddata"))), None)


def tesserocr_usable() -> bool:
    """Whether the in-process engine can run: tesserocr imports and the language data is found."""
    try:
        import tesserocr  # noqa: F401
    except ImportError:
        return False
    return tessdata_dir() is not None


def engine_name(cfg: OcrConfig) -> str:
    """The engine `cfg.engine` resolves to: tesserocr when asked or usable under `auto`, else pytesseract."""
    if cfg.engine == "auto":
        return "tesserocr" if tesserocr_usable() else "pytesseract"
    return cfg.engine


def check_tesseract(cfg: OcrConfig) -> None:
    """Raise JobError, saying how to install what is missing, unless the engine and `cfg.languages` exist."""
    if engine_name(cfg) == "tesserocr":
        if not tesserocr_usable():
            raise JobError(
                "ocr.engine is tesserocr but it cannot run (`pip install tesserocr` and "
                "`apt-get install tesseract-ocr` for the language data), or set ocr.engine: auto"
            )
        import tesserocr

        installed = set(tesserocr.get_languages(tessdata_dir())[1])
        _check_languages(cfg, installed, f"tesserocr {tesserocr.tesseract_version().split()[1]}")
        return
    try:
        version = pytesseract.get_tesseract_version()
        installed = set(pytesseract.get_languages())
    except pytesseract.TesseractNotFoundError as e:
        raise JobError(
            f"OCR is enabled but tesseract is not installed or not on PATH ({e}); install it with "
            "`apt-get install tesseract-ocr` (Debian/Ubuntu), or set ocr.enabled: false"
        ) from e
    _check_languages(cfg, installed, f"tesseract {version}")


def _check_languages(cfg: OcrConfig, installed: set[str], version: str) -> None:
    missing = [lang for lang in cfg.languages.split("+") if lang not in installed]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang.lower().replace('_', '-')}" for lang in missing)
        raise JobError(
            f"{version} has no language pack for {', '.join(missing)} (ocr.languages = "
            f"{cfg.languages!r}; installed: {', '.join(sorted(installed)) or 'none'}); install it with "
            f"`apt-get install {packages}`"
        )


def clip_words(text: str, max_chars: int) -> str:
    """Whitespace collapsed to single spaces, then cut to `max_chars` at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]
    return cut if len(cut) <= max_chars else text[:max_chars]


def _light_text(region: Image.Image) -> bool:
    """Whether the text in `region` (mostly background, some text) is lighter than its background: the
    median pixel, background, then lies on the dark side of the 5th-95th percentile range."""
    low, median, high = np.percentile(np.asarray(region), (5, 50, 95))
    return bool(median < (low + high) / 2)


class OcrText:
    """A table of `id`, `image` (encoded bytes) -> `id`, `ocr_text` (null when no text was read)."""

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg
        # One tesseract thread per worker (read by libtesseract in-process and by a tesseract process, which
        # inherits this environment): OCR runs one worker per CPU, and tesseract's OpenMP threads only add
        # ~40% CPU time on small images. An explicit setting wins.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        # images, bad_image, detected, ocr_run, with_text, timeouts, errors
        self.counters: Counter = Counter()
        self.engine = engine_name(cfg)
        self._api = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [self.read(data) for data in batch.column("image").to_pylist()]
        return pa.table({"id": batch.column("id"), "ocr_text": pa.array(texts, pa.string())})

    def read(self, data: bytes | None) -> str | None:
        """The text of one encoded image, or None."""
        self.counters["images"] += 1
        try:
            with Image.open(io.BytesIO(data)) as image:  # type: ignore[arg-type]
                grey = to_grey(image)
        except Exception:  # noqa: BLE001 - any undecodable input is counted, never raised
            self.counters["bad_image"] += 1
            return None
        if max(grey.size) > self.cfg.max_side:
            grey.thumbnail((self.cfg.max_side, self.cfg.max_side), Image.Resampling.BOX)
        lines = text_lines(grey)
        self.counters["detected"] += bool(lines)
        if self.cfg.detect and not lines:
            return None
        return self._tesseract(self.prepare(grey, lines))

    def prepare(self, grey: Image.Image, lines: list[TextLine]) -> Image.Image:
        """The band of rows holding the detected lines, scaled so the text is about `text_px` tall, as black
        strokes on white (the strokes' contrast against their local background: gradients and shading are
        gone, light text on dark turns dark on light)."""
        if not lines:
            factor = min(self.cfg.max_upscale, FALLBACK_UPSCALE)
            size = (round(grey.width * factor), round(grey.height * factor))
            return grey.resize(size, Image.Resampling.LANCZOS)
        margin = CROP_MARGIN * max(line.box[3] - line.box[1] for line in lines)
        top = max(0, round(min(line.box[1] for line in lines) - margin))
        bottom = min(grey.height, round(max(line.box[3] for line in lines) + margin))
        left, right = min(line.box[0] for line in lines), max(line.box[2] for line in lines)
        dark = not _light_text(grey.crop((left, top, right, bottom)))
        height = statistics.median(line.height for line in lines)
        factor = min(self.cfg.max_upscale, max(MIN_SCALE, self.cfg.text_px / height))
        size = (max(1, round(grey.width * factor)), max(1, round((bottom - top) * factor)))
        band = grey.resize(size, Image.Resampling.LANCZOS, box=(0, top, grey.width, bottom))
        strokes = ink(np.asarray(band, np.int16), dark)
        return Image.fromarray((255 - np.clip(strokes * INK_GAIN, 0, 255)).astype(np.uint8))

    @property
    def api(self):
        """The worker's tesserocr engine, built on first use, reused for every image (None: pytesseract)."""
        if self._api is None and self.engine == "tesserocr":
            import tesserocr

            self._api = tesserocr.PyTessBaseAPI(
                path=tessdata_dir(), lang=self.cfg.languages, psm=self.cfg.psm, oem=tesserocr.OEM.LSTM_ONLY
            )
        return self._api

    def words(self, grey: Image.Image) -> list[tuple[str, float]] | None:
        """(word, confidence) pairs tesseract reads in `grey`; None after a failure or timeout (counted)."""
        if self.api is not None:
            pixels = np.ascontiguousarray(np.asarray(grey, np.uint8))
            self.api.SetImageBytes(pixels.tobytes(), grey.width, grey.height, 1, grey.width)
            if not self.api.Recognize(timeout=max(1, round(self.cfg.timeout_s * 1000))):
                self.counters["timeouts"] += 1
                return None
            return [(w, float(c)) for w, c in self.api.MapWordConfidences()]
        grey.format = "BMP"  # pytesseract writes its temp file in this format: uncompressed is fastest
        try:
            data = pytesseract.image_to_data(
                grey, lang=self.cfg.languages, config=f"--psm {self.cfg.psm}", timeout=self.cfg.timeout_s,
                output_type=pytesseract.Output.DICT,
            )
        except pytesseract.TesseractError:
            self.counters["errors"] += 1
            return None
        except RuntimeError as e:  # pytesseract's timeout is a bare RuntimeError
            self.counters["timeouts" if "timeout" in str(e).lower() else "errors"] += 1
            return None
        return [(w, float(c)) for w, c in zip(data["text"], data["conf"], strict=True)]

    def _tesseract(self, grey: Image.Image) -> str | None:
        self.counters["ocr_run"] += 1
        found = self.words(grey)
        if found is None:
            return None
        words = [
            word for word, conf in found
            if conf >= self.cfg.min_confidence and any(ch.isalnum() for ch in word)
        ]
        text = clip_words(" ".join(words), self.cfg.max_chars)
        if not text:
            return None
        self.counters["with_text"] += 1
        return text
