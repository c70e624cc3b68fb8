"""Colour keying of text lines (`colour_key`) and the OCR stage's line found again in its text colour."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmforge.pipeline.config import OcrConfig
from vlmforge.pipeline.enrich import ocr as ocr_module
from vlmforge.pipeline.enrich.colour_key import colour_lines, colour_modes, keyed, luma_keyed, text_colour
from vlmforge.pipeline.enrich.ocr import OcrText
from vlmforge.pipeline.enrich.text_detect import TextLine, text_lines

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
TEXT_RGB = (240, 220, 60)  # lighter than all of the texture


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Photo-like texture: random dark colours on a 6 px grid, smoothly interpolated (edges everywhere)."""
    blocks = rng.integers(0, 130, (height // 6 + 1, width // 6 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR))


def _text_on_texture(seed: int = 0) -> tuple[Image.Image, np.ndarray, tuple[int, int, int, int]]:
    """RGB image of a word in TEXT_RGB over texture, the text's stroke mask and its ink box."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    rng = np.random.default_rng(seed)
    image = Image.fromarray(_texture(rng, 320, 120))
    layer = Image.new("L", image.size, 0)
    ImageDraw.Draw(layer).text((60, 40), "freedom", fill=255, font=ImageFont.truetype(str(FONT), 32))
    image.paste(Image.new("RGB", image.size, TEXT_RGB), (0, 0), layer)
    return image, np.asarray(layer) > 128, layer.getbbox()


def test_text_colour_is_the_densest_colour():
    rng = np.random.default_rng(1)
    texture = rng.uniform(0, 255, (700, 3))
    text = np.array(TEXT_RGB) + rng.normal(0, 4, (300, 3))
    found = text_colour(np.concatenate([texture, text]).astype(np.float32))
    assert found is not None and np.abs(found - TEXT_RGB).max() < 6
    assert text_colour(np.zeros((3, 3), np.float32)) is None  # too few pixels


def test_keyed_makes_the_text_dark_and_texture_light():
    image, strokes, _ = _text_on_texture()
    grey = np.asarray(keyed(image, dark=True, colour=np.array(TEXT_RGB, np.float32)))
    assert grey[strokes].mean() < 40 and grey[~strokes].mean() > 150
    # the colour found from the image's own light strokes does as well
    own = np.asarray(keyed(image, dark=False))
    assert own[strokes].mean() < 40 and own[~strokes].mean() > 150
    assert keyed(Image.new("RGB", (80, 40), (120, 120, 120)), dark=True) is None  # no strokes, no colour


def test_a_line_taken_in_texture_is_found_again_at_the_text():
    image, _, (x0, y0, x1, y1) = _text_on_texture()
    ocr = OcrText(OcrConfig())
    # a detector line that took in texture: too tall, off to the left, half the word outside it
    wrong = TextLine((20, 10, (x0 + x1) // 2, 110), chars=5, height=60.0, dark=True)
    found = ocr.found_again(image, wrong)
    assert found, "no line found again"
    line, colour = found[0]
    assert np.abs(colour - TEXT_RGB).max() < 30
    bx0, by0, bx1, by1 = line.box
    assert abs(bx0 - x0) <= 3 and abs(bx1 - x1) <= 3 and abs(by0 - y0) <= 3 and abs(by1 - y1) <= 3
    assert line.height < 30  # the characters' height, not the texture's


def test_colour_modes_are_distinct_colours():
    rng = np.random.default_rng(2)
    a, b = np.array([240, 220, 60]), np.array([30, 40, 160])
    pixels = np.concatenate([a + rng.normal(0, 4, (400, 3)), b + rng.normal(0, 4, (250, 3))])
    found = colour_modes(pixels.astype(np.float32), 3)
    assert len(found) == 2  # nothing is left after the two
    assert np.abs(found[0] - a).max() < 6 and np.abs(found[1] - b).max() < 6


def test_text_the_detector_missed_is_found_in_its_colour(monkeypatch):
    image, _, (x0, y0, x1, y1) = _text_on_texture()
    lines = colour_lines(image)
    assert any(abs(ln.box[0] - x0) <= 3 and abs(ln.box[2] - x1) <= 3 and not ln.dark for ln in lines)
    # the stage: the detector gives only a line of texture, far from the word, which reads as nothing
    texture = TextLine((250, 90, 318, 118), chars=4, height=20.0, dark=True)
    monkeypatch.setattr(ocr_module, "text_lines", lambda grey, contrast=None: [texture])
    buf = io.BytesIO()
    image.save(buf, "PNG")
    stage = OcrText(OcrConfig())
    assert stage.read(buf.getvalue()) == "freedom"
    monkeypatch.setattr(ocr_module, "colour_lines", lambda image: [])
    assert stage.read(buf.getvalue()) is None  # without the colour pass the word is lost


@pytest.mark.parametrize("mode", ["RGB", "P", "I;16", "CMYK"])
def test_the_stage_reads_text_in_any_image_mode(mode):
    """The colour image is built for every mode (16-bit greyscale through its 8-bit grey) and read."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    image = Image.new("RGB", (240, 80), (200, 210, 190))
    font = ImageFont.truetype(str(FONT), 32)
    ImageDraw.Draw(image).text((20, 20), "freedom", fill=(30, 40, 120), font=font)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    else:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, "TIFF" if mode == "CMYK" else "PNG")
    ocr = OcrText(OcrConfig())
    assert ocr.read(buf.getvalue()) == "freedom"
    assert ocr.counters["bad_image"] == 0


def test_a_line_seen_in_part_is_widened_to_its_ends():
    """The detector saw only a line's first word (the rest over texture): the crop widens to the right
    until the text ends and every word is read; cropped as detected, the last words are lost."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    rng = np.random.default_rng(3)
    image = Image.fromarray(_texture(rng, 640, 80))
    layer = Image.new("L", image.size, 0)
    words = "information about freedom"
    ImageDraw.Draw(layer).text((20, 25), words, fill=255, font=ImageFont.truetype(str(FONT), 24))
    image.paste(Image.new("RGB", image.size, TEXT_RGB), (0, 0), layer)
    first = Image.new("L", image.size, 0)
    ImageDraw.Draw(first).text((20, 25), "information", fill=255, font=ImageFont.truetype(str(FONT), 24))
    line = TextLine(first.getbbox(), chars=11, height=18.0, dark=False)  # the first word's ink box
    stage, grey = OcrText(OcrConfig()), image.convert("L")
    stage._deadline = float("inf")
    text = np.asarray(TEXT_RGB, np.float32)
    wide, box, widened = stage.line_image(grey, line, image, text, wide=True)
    narrow, _, _ = stage.line_image(grey, line, image, text, wide=False)
    assert widened and box[2] >= layer.getbbox()[2] - 2  # the box read reaches the line's end
    assert " ".join(w.text for w in stage.words(wide, 7, 10.0)) == words
    assert "freedom" not in " ".join(w.text for w in stage.words(narrow, 7, 10.0))


def test_two_groups_reading_one_text_keep_the_more_confident_read(monkeypatch):
    """A group of texture above a text whose crop reached the text reads it too (worse): of two reads
    over one text only the one of more confident characters is kept, whichever group came first; reads
    elsewhere stay."""
    above = TextLine((100, 0, 300, 40), chars=3, height=30.0)
    text = TextLine((20, 50, 400, 80), chars=12, height=20.0)
    other = TextLine((20, 150, 200, 170), chars=6, height=15.0)
    reads = {  # group -> (words, box of the text read, mass)
        above.box: (["Documnt", "that"], (24, 52, 398, 80), 400.0),
        text.box: (["Document", "that", "deals"], (22, 50, 401, 81), 1500.0),
        other.box: (["freedom"], other.box, 600.0),
    }
    monkeypatch.setattr(OcrText, "_read_line", lambda self, grey, colour, group, taken: reads[group[0].box])
    stage, grey = OcrText(OcrConfig()), Image.new("L", (420, 180), 255)
    assert stage._read_groups(grey, [above, text, other], None) == [[], ["Document", "that", "deals"],
                                                                     ["freedom"]]
    reads[above.box] = (["Document", "that", "deals"], (24, 52, 398, 80), 1600.0)
    assert stage._read_groups(grey, [above, text, other], None) == [["Document", "that", "deals"], [],
                                                                     ["freedom"]]


def test_text_merged_with_fainter_texture_is_found_at_a_higher_contrast(monkeypatch):
    """Light text over texture of light specks (50 luma over the background, the text 150): at the
    detector's ink contrast the letters merge with the specks and no line holds the word alone; at
    FALLBACK_CONTRAST they come apart, and the stage's fallback reads the word when its first pass (here a
    line of texture) and the colour pass give nothing."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    specks = np.random.default_rng(0).random((50, 160)) < 0.35
    grey = np.full((100, 320), 100, np.uint8)
    grey[np.kron(specks, np.ones((2, 2), bool))] = 150
    image = Image.fromarray(grey)
    ImageDraw.Draw(image).text((40, 30), "freedom", fill=250, font=ImageFont.truetype(str(FONT), 32))
    columns = (np.asarray(image) == 250).nonzero()[1]
    x0, x1 = columns.min(), columns.max() + 1

    def alone(lines: list[TextLine]) -> bool:  # a line whose box is the word's, give or take a few pixels
        return any(abs(ln.box[0] - x0) <= 6 and abs(ln.box[2] - x1) <= 6 for ln in lines)

    assert not alone(text_lines(image)) and alone(text_lines(image, contrast=ocr_module.FALLBACK_CONTRAST))
    texture = TextLine((250, 80, 318, 99), chars=4, height=15.0, dark=True)
    real = ocr_module.text_lines

    def first_pass_texture(grey: Image.Image, contrast: float | None = None) -> list[TextLine]:
        return [texture] if contrast is None else real(grey, contrast=contrast)

    monkeypatch.setattr(ocr_module, "text_lines", first_pass_texture)
    monkeypatch.setattr(ocr_module, "colour_lines", lambda image: [])
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    assert OcrText(OcrConfig()).read(buf.getvalue()) == "freedom"


def test_the_luma_key_keeps_thin_strokes_jpeg_gave_their_background_hue():
    """Small yellow text on green, saved as JPEG (chroma at half resolution): the colour key loses most
    stroke pixels, the luma key keeps them; the background stays light in both."""
    if not FONT.exists():
        pytest.skip("apt-get install fonts-dejavu-core")
    image, layer = Image.new("RGB", (300, 50), (40, 150, 40)), Image.new("L", (300, 50), 0)
    font = ImageFont.truetype(str(FONT), 14)
    ImageDraw.Draw(layer).text((10, 15), "information freedom", fill=255, font=font)
    image.paste(Image.new("RGB", image.size, TEXT_RGB), (0, 0), layer)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    strokes, behind = np.asarray(layer) > 200, np.asarray(layer) == 0
    text = np.asarray(TEXT_RGB, np.float32)
    colour, luma = np.asarray(keyed(decoded, False, text)), np.asarray(luma_keyed(decoded, text))
    assert (colour[strokes] < 128).mean() < 0.5 and (luma[strokes] < 128).mean() > 0.9
    assert (colour[behind] < 128).mean() < 0.01 and (luma[behind] < 128).mean() < 0.01
    assert luma_keyed(decoded, None) is None
