"""A cheap text-presence test (numpy, Pillow and `blob_label`; no OCR), run before tesseract.

The image is analysed as greyscale, at most `WORK_SIDE` pixels on its long side. Ink is what a
morphological closing (dark ink) or opening (light ink) removes by more than `MIN_CONTRAST`: strokes a few
pixels wide, not large shapes, and soft shading or gradients cancel out. Ink blobs of a character's size are
chained into lines (neighbours of similar height, vertically overlapping, less than about a height apart).
A line is text when it holds at least two different letter-like blobs (not narrow bars, solid blocks or
dots, and not copies or mirror images of each other) that are not mostly copies of one shape: rows of
identical drawn shapes, stripes and dot patterns are not text, while words mix letter shapes.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlmforge.pipeline.enrich.blob_label import components

WORK_SIDE = 640  # longest side analysed; larger images are downscaled first
MIN_CONTRAST = 40.0  # luma difference from the background that makes a pixel ink
MIN_CHAR_PX, MAX_CHAR_SHARE = 6, 0.4  # blob height in pixels, and at most this share of the image height
MIN_BLOB_PX = 12  # blobs with fewer ink pixels are noise
# not letter-like: narrower than BAR_WIDTH x its height, filling SOLID_FILL of its box, or a round DOT_FILL
BAR_WIDTH, SOLID_FILL, DOT_FILL = 0.35, 0.8, 0.72
MAX_GAP, MAX_HEIGHT_RATIO = 1.2, 2.2  # neighbours in a line: gap (x the taller height), height ratio
PAIR_HEIGHT_RATIO, PAIR_ALIGN, PAIR_GAP = 1.3, 0.15, 0.6  # a line of two blobs must be this tight
PATTERN_COPIES, PATTERN_SHARE = 4, 0.75  # this many copies of one shape, making this share, is a pattern
SIGNATURE = 8  # side of the scaled mask that compares blob shapes
SAME_SHAPE_DIFF = 0.15  # mean cell difference under which two scaled masks are copies of one shape
BLOCK = 4  # pooling block of the background estimate, in analysis pixels


@dataclass(frozen=True)
class TextLine:
    """A chain of character-like blobs, in input-image pixels."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in input-image pixels
    chars: int
    height: float  # median blob height
    dark: bool = True  # darker than its background (found in the dark-ink pass)


def to_grey(image: Image.Image) -> Image.Image:
    """8-bit luma ("L") of any Pillow mode; 16/32-bit greyscale keeps its top 8 of 16 bits."""
    if image.mode.startswith("I"):
        deep = np.asarray(image, np.int64)
        deep = deep >> 8 if deep.max(initial=0) > 255 else deep
        return Image.fromarray(deep.clip(0, 255).astype(np.uint8))
    return image.convert("L")


def draft_luma(image: Image.Image, side: int) -> None:
    """Make a JPEG decode as luma at the smallest DCT scale (1/2, 1/4, 1/8) that keeps its long side at
    least `side` (other formats: nothing changes)."""
    scale = side / max(image.size)
    image.draft("L", (max(1, int(np.ceil(image.width * scale))), max(1, int(np.ceil(image.height * scale)))))


def greyscale(image: Image.Image | bytes, max_side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """Luma (int16, 0-255) at most `max_side` on the long side, and the input-to-analysis scale factor."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(image))
        size = image.size  # the input's pixels, before the draft shrinks what is decoded
        draft_luma(image, max_side)
    else:
        size = image.size
    grey = to_grey(image)
    scale = min(1.0, max_side / max(grey.size))
    if scale < 1.0:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BOX)
    return np.asarray(grey, np.int16), grey.width / size[0]


def _edge_pad(a: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """`a` with `bottom` rows and `right` columns more, copies of its last row and column (np.pad's "edge",
    several times cheaper on these small arrays)."""
    if not bottom and not right:
        return a
    h, w = a.shape
    out = np.empty((h + bottom, w + right), a.dtype)
    out[:h, :w] = a
    out[h:, :w] = a[-1:]
    out[:, w:] = out[:, w - 1 : w]
    return out


def _pool(grey: np.ndarray, op: np.ufunc) -> np.ndarray:
    """`op` (np.maximum or np.minimum) over BLOCK x BLOCK blocks; the edges are padded by replication."""
    h, w = grey.shape
    padded = _edge_pad(grey, -h % BLOCK, -w % BLOCK)
    rows = functools.reduce(op, [padded[i::BLOCK] for i in range(BLOCK)])
    return functools.reduce(op, [rows[:, j::BLOCK] for j in range(BLOCK)])


def _window(a: np.ndarray, op: np.ufunc, size: int) -> np.ndarray:
    """`op` over each `size` x `size` neighbourhood (edges replicated), as shifted views: on arrays this
    small, cheaper than scipy.ndimage's filters, with the same result."""
    r, (h, w) = size // 2, a.shape
    padded = _edge_pad(_edge_pad(a[::-1, ::-1], r, r)[::-1, ::-1], r, r)
    rows = op.reduce([padded[i : i + h] for i in range(size)])
    return op.reduce([rows[:, j : j + w] for j in range(size)])


def ink(grey: np.ndarray, dark: bool) -> np.ndarray:
    """How much darker (`dark`) or lighter than their local background the pixels of thin strokes are.

    The background is a morphological closing (for dark ink) or opening (for light ink) by 3 blocks on a
    block-pooled copy: strokes up to ~3 blocks wide vanish from it, larger shapes stay. One more erosion
    (dilation) by a block keeps the edges of large shapes out of the ink (the two erosions are one by a
    5 x 5 window). Soft shading cancels out.
    """
    h, w = grey.shape
    grow, shrink = (np.maximum, np.minimum) if dark else (np.minimum, np.maximum)
    coarse = _window(_window(_pool(grey, grow), grow, 3), shrink, 5)
    behind = np.repeat(np.repeat(coarse, BLOCK, axis=0), BLOCK, axis=1)[:h, :w]
    return behind - grey if dark else grey - behind


def ink_mask(grey: np.ndarray, dark: bool, contrast: float) -> np.ndarray:
    """`ink(grey, dark) > contrast`. Whole-number ink exceeds `contrast` exactly when it exceeds its floor,
    and compared with a whole number it stays int16 (5x cheaper than a comparison with a float)."""
    found = ink(grey, dark)
    return found > (math.floor(contrast) if np.issubdtype(found.dtype, np.integer) else contrast)


@dataclass(frozen=True, slots=True)
class _Blob:
    x0: int
    y0: int
    x1: int
    y1: int
    labels: np.ndarray  # the mask's labels; this blob's pixels are those of `label` in its box
    label: int
    letter: bool  # shaped like a letter: not a narrow bar, a solid block or a dot

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def signature(self) -> np.ndarray:
        """Computed only for the letters of candidate lines (most blobs never need one)."""
        return _signature(self.labels[self.y0 : self.y1, self.x0 : self.x1] == self.label)


def _blobs(mask: np.ndarray, max_h: float) -> list[_Blob]:
    """Connected components of a character's size; each marked letter-like or not."""
    labels, stats = components(mask)
    x0, y0, x1, y1, pixels = stats.T
    h, w = y1 - y0, x1 - x0
    fill = pixels / (h * w)
    dot = (fill >= DOT_FILL) & (0.7 <= w / h) & (w / h <= 1.4)
    letter = (w > BAR_WIDTH * h) & (fill < SOLID_FILL) & ~dot
    sized = (MIN_CHAR_PX <= h) & (h <= max_h) & (w <= 3 * h) & (fill * h * w >= MIN_BLOB_PX)
    return [_Blob(int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]), labels, i + 1, bool(letter[i]))
            for i in np.flatnonzero(sized)]


def _signature(mask: np.ndarray) -> np.ndarray:
    """A blob's mask scaled to SIGNATURE x SIGNATURE cells (ink share per cell): size and aspect removed."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((SIGNATURE, SIGNATURE), Image.Resampling.BOX), np.float32) / 255


def _same_shape(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two blob signatures are copies, or mirror images, of one shape."""
    # the sums over the cells, divided: np.mean's result, without its overhead (a third of this test's time)
    return min(np.abs(a - b).sum() / a.size, np.abs(a - b[:, ::-1]).sum() / a.size) < SAME_SHAPE_DIFF


def _lines(blobs: list[_Blob]) -> list[list[_Blob]]:
    """Group blobs into lines (union-find over aligned neighbours of similar height)."""
    parent = list(range(len(blobs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(blobs)), key=lambda i: blobs[i].x0)
    for n, i in enumerate(order):
        a = blobs[i]
        for j in order[n + 1 :]:
            b = blobs[j]
            tall, short = max(a.h, b.h), min(a.h, b.h)
            if b.x0 - a.x1 > MAX_GAP * tall:
                break
            if tall <= MAX_HEIGHT_RATIO * short and min(a.y1, b.y1) - max(a.y0, b.y0) >= 0.5 * short:
                parent[find(j)] = find(i)
    groups: dict[int, list[_Blob]] = {}
    for i, blob in enumerate(blobs):
        groups.setdefault(find(i), []).append(blob)
    return list(groups.values())


def _is_text(line: list[_Blob]) -> bool:
    """At least two different letter shapes, not mostly copies of one; a pair only when tightly set."""
    letters = [b for b in line if b.letter]
    # a pattern needs this many copies of one kind; once no kind can reach it (with every letter left
    # counted in), the letters left cannot change the outcome and their signatures are not computed
    pattern = max(PATTERN_COPIES, PATTERN_SHARE * len(letters))
    kinds: list[tuple[np.ndarray, int]] = []  # (signature, copies)
    for seen, blob in enumerate(letters, start=1):
        signature = blob.signature
        k = next((k for k, (sig, _) in enumerate(kinds) if _same_shape(signature, sig)), None)
        if k is None:
            kinds.append((signature, 1))
        else:
            kinds[k] = (kinds[k][0], kinds[k][1] + 1)
        if len(kinds) >= 2 and max(c for _, c in kinds) + len(letters) - seen < pattern:
            break
    else:
        if len(kinds) < 2 or max(c for _, c in kinds) >= pattern:
            return False
    if len(line) > 2:
        return True
    a, b = sorted(line, key=lambda blob: blob.x0)
    return (
        max(a.h, b.h) <= PAIR_HEIGHT_RATIO * min(a.h, b.h)
        and abs(a.y1 - b.y1) <= PAIR_ALIGN * max(a.h, b.h)
        and b.x0 - a.x1 <= PAIR_GAP * max(a.h, b.h)
    )


def mask_lines(mask: np.ndarray, max_h: float, dark: bool, scale: float = 1.0,
               offset: tuple[int, int] = (0, 0)) -> list[TextLine]:
    """The text-like lines of an ink `mask`, in the pixels of an image `scale` times smaller whose
    `offset` (x, y) the mask's corner is at."""
    found: list[TextLine] = []
    if np.count_nonzero(mask) < 2 * MIN_BLOB_PX:  # too little ink for two blobs: no line (skips labelling)
        return found
    for line in _lines(_blobs(mask, max_h)):
        if len(line) < 2 or not _is_text(line):
            continue
        x0, y0 = min(b.x0 for b in line), min(b.y0 for b in line)
        x1, y1 = max(b.x1 for b in line), max(b.y1 for b in line)
        box = (offset[0] + int(x0 / scale), offset[1] + int(y0 / scale), offset[0] + int(np.ceil(x1 / scale)),
               offset[1] + int(np.ceil(y1 / scale)))
        found.append(TextLine(box, len(line), float(np.median([b.h for b in line])) / scale, dark))
    return found


def text_lines(image: Image.Image | bytes, max_side: int = WORK_SIDE, contrast: float = MIN_CONTRAST,
               ) -> list[TextLine]:
    """The text-like lines found in `image` (empty when it likely holds no text), with ink at `contrast`."""
    grey, scale = greyscale(image, max_side)
    max_h = max(MIN_CHAR_PX, MAX_CHAR_SHARE * grey.shape[0])
    return [line for dark in (True, False) for line in mask_lines(ink_mask(grey, dark, contrast), max_h, dark,
                                                                   scale)]


def has_text(image: Image.Image | bytes, max_side: int = WORK_SIDE) -> bool:
    """Whether `image` likely contains text."""
    return bool(text_lines(image, max_side))
