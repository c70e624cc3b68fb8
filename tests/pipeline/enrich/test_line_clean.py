"""Keyed line crops tidied before tesseract (`line_clean`): tilt found and undone, texture specks whitened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vlmforge.pipeline.enrich.line_clean import cleaned, straightened, tidied, tilt

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _word(text: str = "information freedom", px: int = 28) -> Image.Image:
    """Black text on white with a margin (grey, as a keyed crop is)."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    image = Image.new("L", (520, 90), 255)
    ImageDraw.Draw(image).text((30, 25), text, fill=0, font=ImageFont.truetype(str(FONT), px))
    return image


@pytest.mark.parametrize("angle", [-4.0, -2.0, 3.0, 5.0])
def test_tilt_is_found_and_straightened(angle):
    leaning = _word().rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    assert abs(tilt(np.asarray(leaning) < 128) + angle) <= 0.5  # the rotation that levels it
    level = straightened(leaning)
    assert abs(tilt(np.asarray(level) < 128)) <= 0.5
    # level text: its dark rows span about one line, not the leaning line's drift
    rows = np.flatnonzero((np.asarray(level) < 128).any(axis=1))
    assert rows[-1] - rows[0] < 40


def test_a_level_crop_is_left_as_it_is():
    word = _word()
    assert straightened(word) is word
    assert tilt(np.ones((4, 4), bool)) == 0.0  # too few dark pixels: no tilt
    assert tilt(np.ones((30, 30), bool)) == 0.0  # a square: every tilt ties, the smallest wins


def test_cleaning_keeps_the_text_and_whitens_texture():
    word = _word()
    text = np.asarray(word) < 128
    messy = word.copy()
    draw = ImageDraw.Draw(messy)
    draw.rectangle((0, 0, 12, 89), fill=0)  # a tall dark band at the edge (texture keyed dark)
    draw.ellipse((470, 70, 478, 78), fill=0)  # a speck below the line, far from the text
    draw.rectangle((500, 30, 508, 50), fill=0)  # a character-sized blob in the band, > 3 heights away
    out = np.asarray(cleaned(messy, char_px=20))
    assert (out[text] < 128).mean() > 0.97  # the text's strokes stay
    near_text = ndimage.maximum_filter(text, size=5)
    assert (out[~near_text] == 255).all()  # everything else is white: the band, the speck, the far blob


def test_specks_at_a_lines_ends_are_whitened_its_punctuation_kept():
    """Small components a little apart from the text at either end of its line are texture; a full stop
    or a quote close to the words is the line's own."""
    word = _word("the notice.")  # ends in a full stop
    text = np.asarray(word) < 128
    cols = np.flatnonzero(text.any(axis=0))
    messy = word.copy()
    draw = ImageDraw.Draw(messy)
    draw.rectangle((cols[0] - 18, 40, cols[0] - 14, 44), fill=0)  # specks ~0.65 heights before the text
    draw.rectangle((cols[-1] + 14, 45, cols[-1] + 17, 47), fill=0)  # and after it
    out = np.asarray(cleaned(messy, char_px=20))
    assert (out[text] < 128).mean() > 0.97  # the words and their full stop stay
    assert (out[:, : cols[0] - 4] == 255).all() and (out[:, cols[-1] + 6 :] == 255).all()
    big = word.copy()  # a character-sized component at the same place is not a speck
    ImageDraw.Draw(big).rectangle((cols[0] - 28, 30, cols[0] - 12, 46), fill=0)
    assert (np.asarray(cleaned(big, char_px=20))[:, : cols[0] - 4] < 128).any()


def test_a_large_shape_of_the_text_colour_does_not_take_the_band():
    """A dark shape below the line with more dark pixels than the text (a flower keyed in yellow text's
    colour) is too tall to be text: the band is found in the text's rows, not on it."""
    word = _word()
    text = np.asarray(word) < 128
    messy = Image.new("L", (520, 200), 255)
    messy.paste(word, (0, 0))
    ImageDraw.Draw(messy).ellipse((20, 80, 300, 199), fill=0)
    assert (np.asarray(messy) < 128)[80:].sum() > text.sum()
    out = np.asarray(cleaned(messy, char_px=20))
    assert (out[:90][text] < 128).mean() > 0.97
    assert (out[100:] == 255).all()


def test_an_empty_or_textless_crop_gives_white():
    blank = Image.new("L", (100, 40), 255)
    assert np.asarray(cleaned(blank, 20)).min() == 255
    tall = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(tall).rectangle((40, 0, 60, 99), fill=0)  # only a component far taller than a character
    assert np.asarray(tidied(tall, 10)).min() == 255


@pytest.mark.parametrize("size", [(1, 1), (50, 3), (3, 50)])
def test_tiny_crops_give_an_image_of_their_size(size):
    for fill in (0, 255):
        out = tidied(Image.new("L", size, fill), 20)
        assert out.size == size and out.mode == "L"
