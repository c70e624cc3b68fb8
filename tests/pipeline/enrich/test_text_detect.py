"""The text detector: its numpy ink map is the morphology it stands for; rows of one shape are patterns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vlmforge.pipeline.enrich.text_detect import BLOCK, draft_luma, ink, ink_mask, text_lines


def _reference_ink(grey: np.ndarray, dark: bool) -> np.ndarray:
    """The ink map by its definition: block pooling, a 3x3 grow and two 3x3 shrinks by scipy.ndimage."""
    h, w = grey.shape
    grow, shrink = (ndimage.maximum_filter, ndimage.minimum_filter) if dark else (
        ndimage.minimum_filter, ndimage.maximum_filter)
    padded = np.pad(grey, ((0, -h % BLOCK), (0, -w % BLOCK)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // BLOCK, BLOCK, padded.shape[1] // BLOCK, BLOCK)
    pooled = blocks.max(axis=(1, 3)) if dark else blocks.min(axis=(1, 3))
    coarse = pooled
    for window in (grow, shrink, shrink):
        coarse = window(coarse, size=3, mode="nearest")
    behind = np.repeat(np.repeat(coarse, BLOCK, axis=0), BLOCK, axis=1)[:h, :w]
    return behind - grey if dark else grey - behind


@pytest.mark.parametrize("shape", [(240, 320), (241, 322), (7, 5), (3, 3), (1, 9), (1, 1), (9, 1)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_ink_equals_its_morphology(shape: tuple[int, int], dtype: type) -> None:
    grey = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(dtype)
    for dark in (True, False):
        got, want = ink(grey, dark), _reference_ink(grey, dark)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)



@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_ink_mask_is_ink_over_the_contrast(dtype: type) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (61, 83)).astype(dtype)
    for dark in (True, False):
        for contrast in (40.0, 37.5, 80.0, -2.5, 0.0):
            np.testing.assert_array_equal(ink_mask(grey, dark, contrast), ink(grey, dark) > contrast)


def test_a_large_jpeg_is_drafted_as_luma_keeping_the_analysed_side():
    """`draft_luma` picks the smallest DCT scale whose long side still reaches the analysed side, whatever
    the aspect ratio (a square request would leave a wide image at full size); other formats are kept."""
    for size, drafted in (((1400, 980), (700, 490)), ((980, 1400), (490, 700)), ((2600, 700), (650, 175)),
                          ((1000, 600), (1000, 600))):
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 60, 30)).save(buf, "JPEG")
        image = Image.open(buf)
        draft_luma(image, 640)
        assert (image.mode, image.size) == ("L", drafted)
        assert image.load() is not None and image.size == drafted
    png = io.BytesIO()
    Image.new("RGB", (1400, 980)).save(png, "PNG")
    image = Image.open(png)
    draft_luma(image, 640)
    assert (image.mode, image.size) == ("RGB", (1400, 980))


def test_lines_of_a_drafted_jpeg_are_in_the_input_images_pixels():
    """`text_lines` on JPEG bytes decodes a reduced draft, but its boxes and heights are the input's, as for
    the decoded image."""
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not font.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    image = Image.new("RGB", (1400, 980), (235, 235, 225))
    ImageDraw.Draw(image).text((200, 400), "public licence terms", fill=(20, 20, 60),
                               font=ImageFont.truetype(str(font), 90))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    decoded, drafted = text_lines(image), text_lines(buf.getvalue())
    assert decoded and len(drafted) == len(decoded)
    for a, b in zip(decoded, drafted, strict=True):
        assert np.abs(np.subtract(a.box, b.box)).max() <= 8, (a, b)
        assert abs(a.height - b.height) <= 0.1 * a.height


def _glyph(kind: str) -> np.ndarray:
    """A 10 x 8 letter-like mask (2 px strokes): a ring, an L, a T or a 7 (none a mirror image of another)."""
    g = np.zeros((10, 8), bool)
    if kind == "O":
        g[:2], g[-2:], g[:, :2], g[:, -2:] = True, True, True, True
    elif kind == "L":
        g[:, :2], g[-2:] = True, True
    elif kind == "T":
        g[:2], g[:, 3:5] = True, True
    elif kind == "7":
        g[:2] = True
        for y in range(2, 10):
            g[y, max(0, 6 - y // 2) : max(0, 6 - y // 2) + 2] = True
    return g


def _row(kinds: str) -> np.ndarray:
    """The glyphs side by side, 4 px apart, tops aligned."""
    mask = np.zeros((20, 12 * len(kinds) + 8), bool)
    for i, kind in enumerate(kinds):
        mask[5:15, 4 + 12 * i : 12 + 12 * i] = _glyph(kind)
    return mask


@pytest.mark.parametrize(("kinds", "text"), [
    ("LT" + "O" * 6, False),  # 6 of 8 letters one shape: a pattern (at least 75% and 4 copies)
    ("LT7" + "O" * 5, True),  # 5 of 8: a word, whatever the order the shapes come in
    ("O" * 5 + "LT7", True),
    ("O" * 6 + "LT", False),
    ("O" * 3 + "L", True),  # 3 copies are never a pattern
    ("OOOO", False),  # one shape only
    ("LT", True),  # a tight pair of two shapes
])
def test_rows_of_one_shape_are_patterns_and_mixed_shapes_are_text(kinds: str, text: bool) -> None:
    from vlmforge.pipeline.enrich.text_detect import _same_shape, _signature, mask_lines

    signatures = [_signature(_glyph(k)) for k in "OLT7"]
    assert not any(_same_shape(a, b) for i, a in enumerate(signatures) for b in signatures[i + 1 :])
    lines = mask_lines(_row(kinds), max_h=100, dark=True)
    assert bool(lines) == text
    if text:
        assert len(lines) == 1 and lines[0].chars == len(kinds)
