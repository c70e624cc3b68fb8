"""Text keyed by its colour: a line crop turned into dark text on white before tesseract.

Rendered text is one colour; the photo behind it is many. Among the crop's stroke pixels (those the
detector's ink test marks in the line's polarity, at `KEY_INK` contrast) the text colour is the densest RGB
mode: the peak of a coarse colour histogram, refined by a few mean-shift steps. Each pixel's grey is its RGB
distance to that colour (0 at the text colour, white from `2 x KEY_DISTANCE` on), so texture of any other
colour or brightness fades to white while the text's antialiased edges stay soft for tesseract's own
binarisation. The same key, thresholded at `KEY_DISTANCE`, finds the text's line again in the OCR stage, and
over a whole image (`colour_lines`: the image's main stroke colours) finds text the luma detector missed. On
the real-font set's ground-truth boxes this read far better than the greyscale crop (dev seed: CER 0.22 ->
0.08).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vlmforge.pipeline.enrich.text_detect import (
    MAX_CHAR_SHARE,
    MIN_CHAR_PX,
    WORK_SIDE,
    TextLine,
    ink_mask,
    mask_lines,
)

KEY_INK = 80.0  # stroke pixels sampled for the colour: at least this luma contrast to the local background
KEY_DISTANCE = 60.0  # RGB distance at which a pixel is mid-grey (half-way to background)
LUMA_DISTANCE = 40.0  # luma distance at which a pixel is mid-grey in `luma_keyed`
MODE_BINS = 8  # colour histogram levels per channel
MODE_RADIUS = 40.0  # mean-shift window (RGB distance)
MIN_STROKE_PX = 10  # fewer sampled pixels: no colour found
IMAGE_MODES = 2  # colours per polarity keyed over a whole image (`colour_lines`)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def text_colour(pixels: np.ndarray) -> np.ndarray | None:
    """The densest colour among `pixels` (N x 3, float), or None for fewer than MIN_STROKE_PX."""
    if len(pixels) < MIN_STROKE_PX:
        return None
    q = (pixels // (256 // MODE_BINS)).astype(np.int32)
    bins = (q[:, 0] * MODE_BINS + q[:, 1]) * MODE_BINS + q[:, 2]
    peak = np.bincount(bins, minlength=MODE_BINS**3).argmax()
    colour = pixels[bins == peak].mean(axis=0)
    for _ in range(3):
        near = pixels[_squared_distance(pixels, colour) < MODE_RADIUS**2]
        if not len(near):
            break
        colour = near.mean(axis=0)
    return colour


def stroke_colour(rgb: np.ndarray, dark: bool) -> np.ndarray | None:
    """The text colour of an RGB array (H x W x 3, float): the densest colour of its stroke pixels of
    polarity `dark` (darker than their background, else lighter); None when there are too few."""
    luma = (rgb @ _LUMA).astype(np.int16)
    return text_colour(rgb[ink_mask(luma, dark, KEY_INK)])


def distance(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Each pixel's RGB distance to `colour`."""
    return np.sqrt(_squared_distance(rgb, colour))


def _squared_distance(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Each pixel's squared RGB distance to `colour`: the channels added one by one, as `.sum(axis=-1)`
    adds them (the same values), but without its slow reduction over a length-3 axis (3x faster)."""
    d = rgb - colour
    d *= d
    return d[..., 0] + d[..., 1] + d[..., 2]


def keyed(crop: Image.Image, dark: bool, colour: np.ndarray | None = None) -> Image.Image | None:
    """`crop` (RGB) as grey distance to the text colour (`colour`, else its own `stroke_colour`): text
    dark, the rest light; None when no colour is found."""
    rgb = np.asarray(crop, np.float32)
    colour = stroke_colour(rgb, dark) if colour is None else colour
    if colour is None:
        return None
    grey = np.clip(distance(rgb, colour) * (255 / (2 * KEY_DISTANCE)), 0, 255)
    return Image.fromarray(grey.astype(np.uint8))


def luma_keyed(crop: Image.Image, colour: np.ndarray | None) -> Image.Image | None:
    """`crop` (RGB) as grey luma distance to the text colour's luma (0 at it, white from 2 x LUMA_DISTANCE);
    None without a colour. JPEG keeps chroma at half resolution, so thin strokes take their background's
    hue and fall out of the colour key; their luma is kept at full resolution."""
    if colour is None:
        return None
    luma = np.asarray(crop, np.float32) @ _LUMA
    grey = np.clip(np.abs(luma - float(colour @ _LUMA)) * (255 / (2 * LUMA_DISTANCE)), 0, 255)
    return Image.fromarray(grey.astype(np.uint8))


def colour_modes(pixels: np.ndarray, k: int) -> list[np.ndarray]:
    """Up to `k` distinct colours of `pixels` (N x 3, float): the densest, then the densest of those more
    than 2 x KEY_DISTANCE from every one found, and so on."""
    found: list[np.ndarray] = []
    for _ in range(k):
        colour = text_colour(pixels)
        if colour is None:
            break
        found.append(colour)
        pixels = pixels[distance(pixels, colour) > 2 * KEY_DISTANCE]
    return found


def colour_lines(image: Image.Image) -> list[TextLine]:
    """Text-like lines of an RGB image keyed by each of its main stroke colours (IMAGE_MODES per polarity):
    pixels within KEY_DISTANCE of a colour, chained like the detector's lines. Text whose strokes touch
    texture of their own brightness is lost to the luma detector, but not to its own colour."""
    scale = min(1.0, WORK_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BOX)
    rgb = np.asarray(image, np.float32)
    luma = (rgb @ _LUMA).astype(np.int16)
    max_h = max(MIN_CHAR_PX, MAX_CHAR_SHARE * rgb.shape[0])
    return [line for dark in (True, False)
            for colour in colour_modes(rgb[ink_mask(luma, dark, KEY_INK)], IMAGE_MODES)
            for line in mask_lines(distance(rgb, colour) < KEY_DISTANCE, max_h, dark, scale)]
