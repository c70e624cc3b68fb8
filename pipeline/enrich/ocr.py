"""OCR enrichment: the text in an image, read by tesseract and appended to captions.

Tesseract runs in-process through tesserocr (its C API; PyPI's wheel bundles libtesseract 5.5, the language
data comes from Debian's tesseract-ocr-eng): one engine per worker, its model loaded once and reused for every
image, fed raw greyscale bytes. Where tesserocr or the language data is missing (or `ocr.engine:
pytesseract`), pytesseract starts one tesseract process per image, as before (~20x slower per image).

Each image is decoded once (greyscale for the detector; its colour kept only where lines are found). The
cheap detector (`text_detect`) finds text-like lines; with `detect` on, images without any skip tesseract.
Lines found at one place (a text in pieces, in both polarities, or with its shadow; words of one row found
apart) form a group; each group is read on its own as a single text line (psm 7). Photo texture next to the
text can give the detector's line a wrong box and height, so the line is first found again in its text's
colour (`colour_key`: the densest colour of its strokes; pixels near it chained into lines as the detector
does), in both polarities. The candidates (lines found again, then the detected box) are cropped with a
margin (wide at the sides, for words the detector missed), scaled so the characters are about `text_px`
tall, keyed by the text colour (grey = distance to it: texture of other colours fades), straightened and
whitened but for the text line (`line_clean`, with `tidy_lines`) (with `colour_key` off, the greyscale
crop, light text inverted), and read until one is read surely. Where the kept text runs into a side of its
crop (the detector saw only part of the line: a word or two over texture of the text's brightness), the crop
widens on that side until the text ends; a widened crop that reads as nothing is read again as first cropped.
Where the line found again in its colour falls short of the detected lines of its row (the colour key lost
the words at an end), the row's whole width is read once more, keyed the same.
A read not sure that holds marks (tokens without a letter or digit: specks by the words) is read again with
the marks' boxes whitened. The read of the most confident characters wins; one read, but not surely, is read
again keyed by the text's luma (`luma_keyed`: thin strokes JPEG gave their background's hue). A group read
with a mean word confidence under `line_confidence` is texture taken for text and gives nothing, unless the
crop keyed by the text's luma reads over it (tried once, only where a read holds DOUBT_LETTERS letters at
DOUBT_MEAN: the colour key can let texture of near colours into text); of two groups whose reads cover one
text (a group of texture next to it whose crop reached it), the read of more confident characters is kept.
When no group gives text, the image is keyed by its main stroke colours (`colour_lines`) and the detector runs
again at FALLBACK_CONTRAST (letters that touch texture of their brightness but lower contrast come apart); the
lines found there that the detector did not have are read the same way. Without a detected line (detect off)
the whole image goes in, upscaled 2x, in `psm`. Words under `min_confidence` (in a line read, those outside
its first and last sure word), and tokens without a letter or digit, are dropped. A bad image or a tesseract
failure or timeout never raises: it is counted, the row gets null.
A video row (`frames`: its sampled JPEG frames, `image` null) is read frame by frame (`clip_text`).
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shlex
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pytesseract
from PIL import Image, ImageOps

from vlmforge.common.errors import JobError
from vlmforge.pipeline.config import OcrConfig
from vlmforge.pipeline.enrich.clip_text import clip_text
from vlmforge.pipeline.enrich.colour_key import (
    KEY_DISTANCE,
    colour_lines,
    distance,
    keyed,
    luma_keyed,
    stroke_colour,
)
from vlmforge.pipeline.enrich.line_clean import DARK, MAX_TILT, tidied
from vlmforge.pipeline.enrich.text_detect import (
    MAX_CHAR_SHARE,
    MIN_CHAR_PX,
    WORK_SIDE,
    TextLine,
    mask_lines,
    text_lines,
    to_grey,
)

FALLBACK_UPSCALE = 2.0  # when no line was detected (detect off), text height is unknown
MIN_SCALE = 0.25  # large text is downscaled towards `text_px`, by this factor at most
CROP_MARGIN = 0.6  # kept above and below a detected line, in its character heights
SIDE_MARGIN = 3.0  # kept left and right of it (words the detector missed), likewise
ROW_HEIGHT_RATIO, ROW_GAP = 1.5, 8.0  # lines joined in a row: height ratio, gap in heights
SURE_CONFIDENCE = 92.0  # a read with this mean word confidence ends its group's reads
LINE_PSM = 7  # tesseract reads each line crop as a single text line
FOUND_AGAIN = 2  # of a detected line, this many lines found again in its text colours are read
MIN_CHARS = 3  # a read of fewer letters and digits is kept only when read surely (texture reads as "ra")
WIDEN_MAX = 6  # a crop whose text runs into its side widens there by SIDE_MARGIN, this often at most
CUT_ROWS = 0.4  # text touching a crop's side over this share of a character height was cut there
FALLBACK_CONTRAST = 80.0  # ink contrast of the luma lines found again when nothing reads (detector: 40)
MAX_READS = 3  # tesseract reads of one group at most (its lines found again first, then as detected)
STRETCH_BY = 1.0  # a line found again read this many heights short of its detected row: read to its ends
DOUBT_LETTERS, DOUBT_MEAN = 8, 20.0  # a group read as texture with this many letters, at this mean: luma too


# The crops are keyed to dark text on white: tesseract's second read of each unsure line, inverted, is
# wasted (a quarter of its time on the real-font set, the same CER).
TESSERACT_VARIABLES = {"tessedit_do_invert": "0"}
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
    return next((str(Path(c)) for c in candidates if c and _has_language_data(c)), None)


def _has_language_data(directory: str) -> bool:
    """Whether `directory` holds any of tesseract's `*.traineddata`."""
    return any(Path(directory).glob("*.traineddata"))


def data_dir(cfg: OcrConfig) -> str | None:
    """The language data the stage reads: `ocr.tessdata_dir` when set, else `tessdata_dir()`."""
    return cfg.tessdata_dir or tessdata_dir()


def tesserocr_usable(directory: str | None = None) -> bool:
    """Whether the in-process engine can run: tesserocr imports and language data is found (in
    `directory` when given)."""
    try:
        import tesserocr  # noqa: F401
    except ImportError:
        return False
    return (directory or tessdata_dir()) is not None


def engine_name(cfg: OcrConfig) -> str:
    """The engine `cfg.engine` resolves to: tesserocr when asked or usable under `auto`, else pytesseract."""
    if cfg.engine == "auto":
        return "tesserocr" if tesserocr_usable(cfg.tessdata_dir) else "pytesseract"
    return cfg.engine


def _tessdata_option(cfg: OcrConfig) -> str:
    """The tesseract command line's option for `ocr.tessdata_dir` ('' when unset)."""
    return f"--tessdata-dir {shlex.quote(cfg.tessdata_dir)}" if cfg.tessdata_dir else ""


def check_tesseract(cfg: OcrConfig) -> None:
    """Raise JobError, saying how to install what is missing, unless the engine and `cfg.languages` exist."""
    if cfg.tessdata_dir and not _has_language_data(cfg.tessdata_dir):
        raise JobError(f"ocr.tessdata_dir: no *.traineddata in {cfg.tessdata_dir!r} (a local directory on "
                       "every worker), or set it to null for the installed language data")
    if engine_name(cfg) == "tesserocr":
        if not tesserocr_usable(cfg.tessdata_dir):
            raise JobError(
                "ocr.engine is tesserocr but it cannot run (`pip install tesserocr` and "
                "`apt-get install tesseract-ocr` for the language data), or set ocr.engine: auto"
            )
        import tesserocr

        installed = set(tesserocr.get_languages(data_dir(cfg))[1])
        _check_languages(cfg, installed, f"tesserocr {tesserocr.tesseract_version().split()[1]}")
        return
    try:
        version = pytesseract.get_tesseract_version()
        installed = set(pytesseract.get_languages(config=_tessdata_option(cfg)))
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
        fix = (f"add {', '.join(f'{lang}.traineddata' for lang in missing)} to ocr.tessdata_dir"
               if cfg.tessdata_dir else f"install it with `apt-get install {packages}`")
        raise JobError(
            f"{version} has no language pack for {', '.join(missing)} (ocr.languages = "
            f"{cfg.languages!r}; installed: {', '.join(sorted(installed)) or 'none'}); {fix}"
        )


def clip_words(text: str, max_chars: int) -> str:
    """Whitespace collapsed to single spaces, then cut to `max_chars` at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]
    return cut if len(cut) <= max_chars else text[:max_chars]


class _Timeout(Exception):
    """An image's tesseract runs took longer than `timeout_s`."""


class Word(NamedTuple):
    """A word tesseract read: its text, confidence (0-100) and box (x0, y0, x1, y1) in the image read."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]


def _alnum(text: str) -> bool:
    """Whether `text` holds a letter or digit (a word, not a mark)."""
    return any(ch.isalnum() for ch in text)


class OcrText:
    """A table of `id`, `image` (encoded bytes) -> `id`, `ocr_text` (null when no text was read)."""

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg
        # One tesseract thread per worker (read by libtesseract in-process and by a tesseract process, which
        # inherits this environment): OCR runs one worker per CPU, and tesseract's OpenMP threads only add
        # ~40% CPU time on small images. An explicit setting wins.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        # images, bad_image, detected, ocr_run (tesseract runs), with_text, timeouts, errors
        self.counters: Counter = Counter()
        self.engine = engine_name(cfg)
        self._api = None
        self._deadline = 0.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        """`id`, `image` and, for video rows, `frames` (sampled JPEGs; `image` null) -> `id`, `ocr_text`."""
        images = batch.column("image").to_pylist()
        clips = batch.column("frames").to_pylist() if "frames" in batch.column_names else [None] * len(images)
        texts = [self.read(image) if frames is None else clip_text(self, frames)
                 for image, frames in zip(images, clips, strict=True)]
        return pa.table({"id": batch.column("id"), "ocr_text": pa.array(texts, pa.string())})

    def read(self, data: bytes | None) -> str | None:
        """The text of one encoded image, or None."""
        self.counters["images"] += 1
        lines = self.read_lines(data)
        if lines is None:
            self.counters["bad_image"] += 1
            return None
        return self.finish(lines)

    def read_lines(self, data: bytes | None) -> list[str] | None:
        """The text lines of one encoded image in reading order ([] when none is read, or on a tesseract
        failure or timeout, which are counted); None when it does not decode."""
        self._deadline = time.monotonic() + self.cfg.timeout_s  # decode, detection and all tesseract runs
        try:
            image = Image.open(io.BytesIO(data))  # type: ignore[arg-type]
            grey = to_grey(image)
        except Exception:  # noqa: BLE001 - any undecodable input is reported to the caller, never raised
            return None
        with image:
            if max(grey.size) > self.cfg.max_side:
                grey.thumbnail((self.cfg.max_side, self.cfg.max_side), Image.Resampling.BOX)
            lines = text_lines(grey)
            colour = _colour(image, grey) if lines and self.cfg.colour_key else None  # decoded already
        self.counters["detected"] += bool(lines)
        try:
            return self._read_lines(grey, lines, colour)
        except _Timeout:
            self.counters["timeouts"] += 1
            return []

    def _read_lines(self, grey: Image.Image, lines: list[TextLine], colour: Image.Image | None) -> list[str]:
        if not lines:
            if self.cfg.detect:
                return []
            factor = min(self.cfg.max_upscale, FALLBACK_UPSCALE)
            size = (round(grey.width * factor), round(grey.height * factor))
            found = self._run(grey.resize(size, Image.Resampling.LANCZOS), self.cfg.psm)
            return _text_lines([] if found is None else [_kept(found, self.cfg.min_confidence)])
        groups = self._read_groups(grey, lines, colour)
        if not any(groups) and colour is not None:
            # nothing read: lines in the image's main text colours, and in luma at a higher ink contrast
            # (letters touching texture of their own brightness but of lower contrast come apart)
            found = colour_lines(colour) + text_lines(grey, contrast=FALLBACK_CONTRAST)
            again = [ln for ln in found if all(_overlap(ln.box, m.box) < 0.5 for m in lines)]
            groups = self._read_groups(grey, again, colour) if again else groups
        return _text_lines(groups)

    def _read_groups(self, grey: Image.Image, lines: list[TextLine], colour: Image.Image | None,
                     ) -> list[list[str]]:
        """The words of `lines`, read group by group (a group whose reads all failed gives []). Two groups
        whose reads cover one text (a group of texture next to it whose crop reached the text) keep only
        the read of more confident characters."""
        out: list[list[str]] = []
        kept: list[tuple[tuple[int, int, int, int], float, int]] = []  # box read, mass, index in out
        sure: list[tuple[int, int, int, int]] = []  # boxes of the kept reads read surely
        for group in _same_place(lines):
            words, box, mass = self._read_line(grey, colour, group, sure)
            out.append(words)
            if not words:
                continue
            same = [k for k in kept if _overlap(k[0], box) >= 0.5]
            if any(m >= mass for _, m, _ in same):
                out[-1] = []
                continue
            for k in same:
                out[k[2]] = []
                kept.remove(k)
            kept.append((box, mass, len(out) - 1))
            if mass >= SURE_CONFIDENCE * sum(map(len, words)):
                sure.append(box)
        return out

    def found_again(self, colour: Image.Image, line: TextLine) -> list[tuple[TextLine, np.ndarray]]:
        """`line` found again in its text's colour, for each polarity (the detected one first): the colour
        of the line's strokes, keyed around it (1 height above and below, SIDE_MARGIN heights at the
        sides), chained like the detector's lines; the line of the most letters with those of its row.
        Where the detector's line took in texture (a wrong height) or missed words, this gives the text's
        own box. (line, colour) pairs, most letters first."""
        scale = min(1.0, WORK_SIDE / max(colour.size))
        x0, y0, x1, y1 = line.box
        side = SIDE_MARGIN * line.height
        box = (max(0, round(x0 - side)), max(0, round(y0 - line.height)), min(colour.width, round(x1 + side)),
               min(colour.height, round(y1 + line.height)))
        size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
        rgb = np.asarray(colour.resize(size, Image.Resampling.BOX, box=box), np.float32)
        inner = rgb[round((y0 - box[1]) * scale) : round((y1 - box[1]) * scale) + 1,
                    round((x0 - box[0]) * scale) : round((x1 - box[0]) * scale) + 1]
        max_h = max(MIN_CHAR_PX, MAX_CHAR_SHARE * colour.height * scale)
        found = []
        for dark in (line.dark, not line.dark):
            text = stroke_colour(inner, dark)
            lines = [] if text is None else mask_lines(distance(rgb, text) < KEY_DISTANCE, max_h, dark, scale,
                                                       box[:2])
            if lines:
                main = max(lines, key=lambda ln: ln.chars)
                found.append((_joined([ln for ln in lines if ln is main or _same_row(main, ln)]), text))
        return sorted(found, key=lambda pair: -pair[0].chars)

    def line_image(self, grey: Image.Image, line: TextLine, colour: Image.Image | None = None,
                   text: np.ndarray | None = None, wide: bool = True, luma: bool = False,
                   ) -> tuple[Image.Image, tuple[int, int, int, int], bool]:
        """One detected line with a margin, scaled so its characters are about `text_px` tall, dark on light:
        keyed by the text's colour (`text`, else its strokes') when `colour` (the RGB image) is given and a
        colour is found (by its luma only with `luma`), then (with `tidy_lines`) straightened with everything
        but the text line whitened (`line_clean`), else the greyscale crop (light text inverted). Where the
        kept text runs into a side of a tidied crop (the detector saw only part of the line), the crop widens
        there by SIDE_MARGIN heights, up to WIDEN_MAX times. Also the box (image pixels) of the text read: the
        tidied crop's dark pixels, else the line's box; and whether the crop was widened."""
        pad, side = max(4.0, CROP_MARGIN * line.height), SIDE_MARGIN * line.height
        x0, y0, x1, y1 = line.box
        box = (max(0, round(x0 - side)), max(0, round(y0 - pad)), min(grey.width, round(x1 + side)),
               min(grey.height, round(y1 + pad)))
        factor = min(self.cfg.max_upscale, max(MIN_SCALE, self.cfg.text_px / line.height))
        size = (max(1, round((box[2] - box[0]) * factor)), max(1, round((box[3] - box[1]) * factor)))
        if colour is not None:
            widened = False
            for _ in range(WIDEN_MAX + 1 if wide else 1):
                rgb = colour.resize(size, Image.Resampling.LANCZOS, box=box)
                text = stroke_colour(np.asarray(rgb, np.float32), line.dark) if text is None else text
                crop = luma_keyed(rgb, text) if luma else keyed(rgb, line.dark, text)
                if crop is None or not self.cfg.tidy_lines:
                    break
                crop = tidied(crop, factor * line.height)
                left, right = _cut(crop, factor * line.height)
                left, right = left and box[0] > 0, right and box[2] < grey.width
                if not (wide and (left or right)):
                    break
                widened = True
                box = (max(0, round(box[0] - left * side)), box[1],
                       min(grey.width, round(box[2] + right * side)), box[3])
                size = (max(1, round((box[2] - box[0]) * factor)), size[1])
            if crop is not None:
                return crop, _ink_box(crop, box, size, factor) or line.box, widened
        crop = grey.resize(size, Image.Resampling.LANCZOS, box=box)
        return (crop if line.dark else ImageOps.invert(crop)), line.box, False

    def _read_line(
        self, grey: Image.Image, colour: Image.Image | None, group: list[TextLine],
        taken: list[tuple[int, int, int, int]],
    ) -> tuple[list[str], tuple[int, int, int, int], float]:
        """The words of one group of lines (one text found in pieces, in either polarity, or with its shadow),
        the box of the text read and its mass (characters x confidence). Candidates, read in this order until
        one is read surely (or MAX_READS): per polarity (the one with more characters first) the lines found
        again in its text colours, then the detected lines as one box; candidates over text an earlier group
        read (`taken`) are skipped. The read of the most confident characters is kept; a line found again
        whose read falls short of its detected row is read again to the row's ends (`_stretched`), and a
        read not sure is read again keyed by the text's luma; no words when none reads as text (mean
        confidence under `line_confidence`: texture; the longest of those at DOUBT_MEAN or more is read
        keyed by luma once, kept when it reads as text) or after failures."""
        best: tuple[float, list[str], tuple[int, int, int, int]] = (0.0, [], group[0].box)
        parts = [[line for line in group if line.dark == dark] for dark in (True, False)]

        def candidates() -> Iterator[tuple[TextLine, np.ndarray | None]]:
            # lazily: a part's lines are found again only when the reads before have not ended the group
            for part in sorted((p for p in parts if p), key=lambda p: -sum(line.chars for line in p)):
                line = _joined(part)
                if colour is not None:
                    yield from self.found_again(colour, line)[:FOUND_AGAIN]
                yield line, None

        # a line over text another group's read already covers is that text again (in pieces, its shadow)
        fresh = (c for c in candidates() if all(_overlap(c[0].box, box) < 0.5 for box in taken))
        chosen: tuple[TextLine, np.ndarray | None] | None = None  # the candidate of the best read
        doubt: tuple[float, tuple[TextLine, np.ndarray | None] | None] = (0.0, None)  # best read as texture
        for line, text in itertools.islice(fresh, MAX_READS):
            mean = 0.0
            for wide in (True, False):  # a widened crop that reads as nothing is read again as detected
                image, box, widened = self.line_image(grey, line, colour, text, wide)
                read = self._read_crop(image)
                if read is None:
                    break
                kept, mass, mean, seen = read
                if not kept and mean >= DOUBT_MEAN and seen > doubt[0]:
                    doubt = (seen, (line, text))
                if mass > best[0]:
                    best, chosen = (mass, kept, box), (line, text)
                if kept or not widened:
                    break
            if mean >= SURE_CONFIDENCE:  # read surely: the other candidates are this text again, or texture
                break
        if chosen is not None and chosen[1] is not None:
            # the text's line found again is shorter than the detected lines of its row (its colour lost
            # words at an end): read the row's whole width once, keyed the same
            wider = _stretched(chosen[0], best[2], group)
            if wider is not None:
                read, box = self._read_again(grey, colour, wider, chosen[1])
                if read is not None and read[1] > best[0]:
                    best, chosen = (read[1], read[0], box), (wider, chosen[1])
        if chosen is not None and colour is not None and best[0] < SURE_CONFIDENCE * sum(map(len, best[1])):
            # read, but not surely: the same crop keyed by the text's luma (letters the colour key lost)
            read, box = self._read_again(grey, colour, *chosen, luma=True)
            if read is not None and read[1] > best[0]:
                best = (read[1], read[0], box)
        if chosen is None and doubt[1] is not None and colour is not None:
            # every read was under `line_confidence`, one of them long and not wholly unsure: texture, or text
            # whose colour key let texture in; the text's luma key reads text again at its confidence
            read, box = self._read_again(grey, colour, *doubt[1], luma=True)
            if read is not None and read[0]:
                best = (read[1], read[0], box)
        return best[1], best[2], best[0]

    def _read_again(self, grey: Image.Image, colour: Image.Image | None, line: TextLine,
                    text: np.ndarray | None, luma: bool = False,
                    ) -> tuple[tuple[list[str], float, float, float] | None, tuple[int, int, int, int]]:
        """One more read of `line` keyed by `text` (by its luma with `luma`): `_read_crop`'s result and the
        box of the text read."""
        image, box, _ = self.line_image(grey, line, colour, text, luma=luma)
        return self._read_crop(image), box

    def _read_crop(self, image: Image.Image) -> tuple[list[str], float, float, float] | None:
        """A line crop read as one line: its kept words, their mass (characters x confidence), the mean
        word confidence and the mass of all its words where they hold DOUBT_LETTERS letters (else 0); no
        words when the read is texture (mean under `line_confidence`, or short and not sure); None after a
        failure. A read not sure that holds marks (tokens without a letter or digit: specks of texture by
        the words, which pull tesseract's confidence in them down) is read again with the marks' boxes
        whitened; the read of more mass wins."""
        found = self._run(image, LINE_PSM)
        if found is None:
            return None
        read = self._judged(found)
        marks = [w.box for w in found if w.text.strip() and not _alnum(w.text)]  # (pytesseract: empty levels)
        if marks and read[2] < SURE_CONFIDENCE and any(_alnum(w.text) for w in found):
            again = self._run(_whitened(image, marks), LINE_PSM)
            if again is not None and (other := self._judged(again))[1:3] > read[1:3]:
                read = other
        return read

    def _judged(self, found: list[Word]) -> tuple[list[str], float, float, float]:
        """`_read_crop`'s result for one read."""
        words = [(w.text, w.confidence) for w in found if _alnum(w.text)]  # marks: no evidence
        letters = sum(ch.isalpha() for w, _ in words for ch in w)
        seen = sum(len(w) * c for w, c in words) if letters >= DOUBT_LETTERS else 0.0
        mean = statistics.fmean(c for _, c in words) if words else 0.0
        short = sum(ch.isalnum() for w, _ in words for ch in w) < MIN_CHARS
        if mean < (SURE_CONFIDENCE if short else self.cfg.line_confidence):
            words = []
        kept = _kept_in_line(words, self.cfg.min_confidence)
        return kept, sum(len(w) * c for w, c in words if w in kept), mean, seen

    @property
    def api(self):
        """The worker's tesserocr engine, built on first use, reused for every image (None: pytesseract)."""
        if self._api is None and self.engine == "tesserocr":
            import tesserocr

            self._api = tesserocr.PyTessBaseAPI(
                path=data_dir(self.cfg), lang=self.cfg.languages, psm=self.cfg.psm,
                oem=tesserocr.OEM.LSTM_ONLY, variables=TESSERACT_VARIABLES,
            )
        return self._api

    def words(self, grey: Image.Image, psm: int, timeout_s: float) -> list[Word] | None:
        """The words tesseract reads in `grey`; None after a failure (counted); raises _Timeout past
        `timeout_s`."""
        if (api := self.api) is not None:
            api.SetPageSegMode(psm)
            pixels = np.ascontiguousarray(np.asarray(grey, np.uint8))
            api.SetImageBytes(pixels.tobytes(), grey.width, grey.height, 1, grey.width)
            if not api.Recognize(timeout=max(1, round(timeout_s * 1000))):
                raise _Timeout
            return _word_confidences(api)
        grey.format = "BMP"  # pytesseract writes its temp file in this format: uncompressed is fastest
        try:
            data = pytesseract.image_to_data(
                grey, lang=self.cfg.languages, timeout=timeout_s,
                config=" ".join([f"--psm {psm}", *(f"-c {k}={v}" for k, v in TESSERACT_VARIABLES.items()),
                                 _tessdata_option(self.cfg)]),
                output_type=pytesseract.Output.DICT,
            )
        except pytesseract.TesseractError:
            self.counters["errors"] += 1
            return None
        except RuntimeError as e:  # pytesseract's timeout is a bare RuntimeError
            if "timeout" in str(e).lower():
                raise _Timeout from e
            self.counters["errors"] += 1
            return None
        boxes = zip(data["left"], data["top"], data["width"], data["height"], strict=True)
        return [Word(w, float(c), (x, y, x + dx, y + dy))
                for w, c, (x, y, dx, dy) in zip(data["text"], data["conf"], boxes, strict=True)]

    def _run(self, grey: Image.Image, psm: int) -> list[Word] | None:
        """One tesseract run within what is left of the image's `timeout_s` (its whole read)."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _Timeout
        self.counters["ocr_run"] += 1
        return self.words(grey, psm, left)

    def finish(self, lines: list[str]) -> str | None:
        """A row's OCR text: `lines` joined, cut to `max_chars` (counted in `with_text`); None when empty."""
        text = clip_words(" ".join(lines), self.cfg.max_chars)
        if not text:
            return None
        self.counters["with_text"] += 1
        return text


def _word_confidences(api) -> list[Word]:
    """The words of the last recognition with their boxes, confidences as tesserocr's MapWordConfidences
    gives them (whole numbers), without the warning it logs for every crop where no word was found."""
    import tesserocr

    level, out = tesserocr.RIL.WORD, []
    words = api.GetIterator()
    if words is None:
        return out
    for word in tesserocr.iterate_level(words, level):
        try:
            text = word.GetUTF8Text(level)
        except RuntimeError:  # "No text returned": nothing was recognised
            break
        out.append(Word(text, float(int(word.Confidence(level))), word.BoundingBox(level)))
    return out


def _colour(image: Image.Image, grey: Image.Image) -> Image.Image | None:
    """`image` as RGB at `grey`'s size (deep greyscale modes: `grey` itself, as RGB); None for a mode Pillow
    cannot convert (its greyscale crops are read instead)."""
    try:
        rgb = grey.convert("RGB") if image.mode.startswith(("I", "F")) else image.convert("RGB")
    except (ValueError, OSError):
        return None
    return rgb if rgb.size == grey.size else rgb.resize(grey.size, Image.Resampling.BOX)


def _text_lines(groups: list[list[str]]) -> list[str]:
    """Each group's words as one line; groups without words give none."""
    return [" ".join(words) for words in groups if words]


def _cut(crop: Image.Image, char_px: float) -> tuple[bool, bool]:
    """Whether a tidied crop's text reaches its left and right sides (within the white corners a rotation by
    up to MAX_TILT degrees adds) over CUT_ROWS of a character's height: the text was cut there."""
    dark = np.asarray(crop) < DARK
    edge = 2 + int(np.ceil(crop.height * np.sin(np.radians(MAX_TILT))))
    rows = CUT_ROWS * char_px
    return bool(dark[:, :edge].any(axis=1).sum() >= rows), bool(dark[:, -edge:].any(axis=1).sum() >= rows)


def _ink_box(crop: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int], factor: float,
             ) -> tuple[int, int, int, int] | None:
    """The box in image pixels of a tidied crop's dark pixels (the crop of `box`, scaled by `factor` to
    `size`, then rotated about its centre, which can grow it); None when nothing is dark. The rotation is
    ignored (a few degrees)."""
    ys, xs = np.nonzero(np.asarray(crop) < DARK)
    if not len(xs):
        return None
    dx, dy = (crop.width - size[0]) / 2, (crop.height - size[1]) / 2
    return (box[0] + int((xs.min() - dx) / factor), box[1] + int((ys.min() - dy) / factor),
            box[0] + int(np.ceil((xs.max() + 1 - dx) / factor)),
            box[1] + int(np.ceil((ys.max() + 1 - dy) / factor)))


def _kept_in_line(found: list[tuple[str, float]], min_confidence: float) -> list[str]:
    """Of one line's words (each holding a letter or digit), those from the first to the last at
    `min_confidence` or above: a doubtful word between sure ones is a word of the line, misspelt at worst."""
    sure = [i for i, (_, c) in enumerate(found) if c >= min_confidence]
    return [w for w, _ in found[sure[0] : sure[-1] + 1]] if sure else []


def _kept(found: list[Word], min_confidence: float) -> list[str]:
    """Words at `min_confidence` or above that hold a letter or digit."""
    return [w.text for w in found if w.confidence >= min_confidence and _alnum(w.text)]


def _whitened(image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    """`image` (grey) with `boxes` white."""
    pixels = np.array(image)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def _stretched(line: TextLine, read: tuple[int, int, int, int], group: list[TextLine]) -> TextLine | None:
    """`line` (found again) widened to the detected lines of `group` in its row (`_in_row`) where they reach
    over STRETCH_BY heights beyond the box read (`read`) on a side; None where none does."""
    row = [ln for ln in group if _in_row(line, ln)]
    if not row:
        return None
    x0, x1 = min(ln.box[0] for ln in row), max(ln.box[2] for ln in row)
    reach = STRETCH_BY * line.height
    if x0 >= read[0] - reach and x1 <= read[2] + reach:
        return None
    box = (min(x0, line.box[0]), line.box[1], max(x1, line.box[2]), line.box[3])
    return TextLine(box, line.chars, line.height, line.dark)


def _joined(lines: list[TextLine]) -> TextLine:
    """One line holding `lines`: their union box, the character-weighted median height."""
    box = (min(ln.box[0] for ln in lines), min(ln.box[1] for ln in lines), max(ln.box[2] for ln in lines),
           max(ln.box[3] for ln in lines))
    heights = [ln.height for ln in lines for _ in range(ln.chars)]
    return TextLine(box, sum(ln.chars for ln in lines), float(np.median(heights)), lines[0].dark)


def _same_place(lines: list[TextLine]) -> list[list[TextLine]]:
    """Lines grouped (transitively) where one overlaps half the smaller box or follows the other in its row
    (words of one text line found apart, in either polarity, or a text and its shadow); the groups in
    reading order: top to bottom, left to right within a row."""
    parent = list(range(len(lines)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(lines):
        for j in range(i):
            if _overlap(a.box, lines[j].box) >= 0.5 or _same_row(a, lines[j]):
                parent[find(i)] = find(j)
    groups: dict[int, list[TextLine]] = {}
    for i, line in enumerate(lines):
        groups.setdefault(find(i), []).append(line)

    def key(group: list[TextLine]) -> tuple[float, int]:
        line = _joined(group)
        return round((line.box[1] + line.box[3]) / 2 / max(1.0, line.height)), line.box[0]

    return sorted(groups.values(), key=key)


def _in_row(a: TextLine, b: TextLine) -> bool:
    """Whether `a` and `b` are in one row: heights within ROW_HEIGHT_RATIO, rows overlapping by half."""
    short, tall = sorted((a.height, b.height))
    rows = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    return tall <= ROW_HEIGHT_RATIO * short and rows >= 0.5 * min(a.box[3] - a.box[1], b.box[3] - b.box[1])


def _same_row(a: TextLine, b: TextLine) -> bool:
    """Whether `b` continues `a`'s row: in one row (`_in_row`), a gap under ROW_GAP heights (the detector
    can miss most of a word of small text)."""
    gap = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
    return _in_row(a, b) and gap <= ROW_GAP * max(a.height, b.height)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / max(1, smaller)
