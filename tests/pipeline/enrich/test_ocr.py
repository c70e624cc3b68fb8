"""OCR stage: accuracy on rendered text, the text detector on the sample data, and failure handling.

Accuracy cases are single-line phrases rendered here with DejaVu and Liberation fonts (regular, bold, italic,
serif, mono, condensed), 14-40 px, rotated up to 5 degrees, on shaded backgrounds, stored as JPEG. They are
the text tesseract is expected to read: font size >= READABLE_PX and luma contrast >= READABLE_CONTRAST
(the sample data draws text at >= 14 px and >= 90 luma). Smaller or fainter text is not rendered here.
"""

from __future__ import annotations

import io
import random
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytesseract
import pytest
import wordfreq
from PIL import Image, ImageDraw, ImageFont

from vlmforge.common.errors import JobError
from vlmforge.pipeline.config import OcrConfig
from vlmforge.pipeline.enrich import line_clean
from vlmforge.pipeline.enrich import ocr as ocr_module
from vlmforge.pipeline.enrich.ocr import OcrText, _kept_in_line, _stretched, check_tesseract
from vlmforge.pipeline.enrich.ocr_eval import SIZES, render
from vlmforge.pipeline.enrich.text_detect import TextLine, has_text
from vlmforge.pipeline.sample_data import write_sample_data
from vlmforge.pipeline.sample_data.reading import edit_distance, images_with_text

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
    "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed.ttf", "LiberationSans-Regular.ttf",
    "LiberationSans-Bold.ttf", "LiberationSerif-Regular.ttf", "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf", "LiberationSansNarrow-Regular.ttf",
)
READABLE_PX, MAX_PX, READABLE_CONTRAST = 14, 40, 60.0
N_CASES, MAX_CER = 200, 0.05
WORDS = [w for w in wordfreq.top_n_list("en", 3000) if w.isalpha() and len(w) >= 3]


def _font_path(name: str) -> Path:
    path = next((d / name for d in FONT_DIRS if (d / name).exists()), None)
    if path is None:
        pytest.skip(f"font {name} missing: apt-get install fonts-dejavu-core fonts-liberation")
    return path


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _phrase(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(1, 3))
    if rng.random() < 0.2:
        words.append(str(rng.randint(2, 2099)))
    case = rng.choice((str.lower, str.title, str.upper, lambda s: s))
    return case(" ".join(words))


def render_case(seed: int) -> tuple[bytes, str]:
    """One JPEG with a known phrase: random font, size, colours, shading and a rotation within 5 degrees."""
    rng = random.Random(seed)
    text = _phrase(rng)
    font_file = _font_path(rng.choice(FONTS))
    size = rng.randint(READABLE_PX, MAX_PX)
    font = ImageFont.truetype(str(font_file), size)
    while font.getlength(text) > 560 and size > READABLE_PX:
        size -= 1
        font = ImageFont.truetype(str(font_file), size)
    left, top, right, bottom = font.getbbox(text)
    layer = Image.new("L", (int(right - left) + 4, int(bottom - top) + 4), 0)
    ImageDraw.Draw(layer).text((2 - left, 2 - top), text, fill=255, font=font)
    layer = layer.rotate(rng.uniform(-5, 5), resample=Image.Resampling.BICUBIC, expand=True)
    width, height = layer.width + rng.randint(20, 120), layer.height + rng.randint(20, 120)
    while True:
        bg = tuple(rng.randrange(256) for _ in range(3))
        fg = tuple(rng.randrange(256) for _ in range(3))
        if abs(_luma(bg) - _luma(fg)) >= READABLE_CONTRAST:
            break
    ramp = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize((width, height))
    shade = rng.uniform(0.0, 0.2)  # the background darkens by up to 20% across the image
    image = Image.merge("RGB", [ramp.point(lambda v, c=c: c * (1 - shade * v / 255)) for c in bg])
    xy = (rng.randint(0, width - layer.width), rng.randint(0, height - layer.height))
    image.paste(Image.new("RGB", layer.size, fg), xy, layer)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=rng.randint(80, 95))
    return buf.getvalue(), text


def _read_cases(seeds: list[int]) -> list[tuple[str, str]]:
    ocr = OcrText(OcrConfig())
    return [(text, ocr.read(data) or "") for data, text in map(render_case, seeds)]


@pytest.mark.slow  # hundreds of tesseract runs
def test_ocr_character_error_rate_on_rendered_text():
    seeds = list(range(N_CASES))
    with get_context("spawn").Pool(2) as pool:
        pairs = [p for chunk in pool.map(_read_cases, [seeds[0::2], seeds[1::2]]) for p in chunk]
    errors = sum(min(edit_distance(truth, read), len(truth)) for truth, read in pairs)
    chars = sum(len(truth) for truth, _ in pairs)
    worst = sorted(pairs, key=lambda p: -edit_distance(*p))[:5]
    assert errors / chars <= MAX_CER, f"CER {errors / chars:.3f} over {len(pairs)} images; worst: {worst}"


def test_detector_recall_and_skip_rate_on_sample_data(tmp_path):
    write_sample_data(tmp_path, n=1000, seed=7)
    images = [(data, text) for _, data, text in images_with_text(tmp_path)]
    with_text = [has_text(data) for data, text in images if text]
    without = [has_text(data) for data, text in images if not text]
    assert len(with_text) >= 80 and len(without) >= 700
    recall = sum(with_text) / len(with_text)
    flagged = sum(without) / len(without)
    assert recall >= 0.95, f"recall {recall:.3f} on {len(with_text)} text images"
    assert flagged <= 0.10, f"{flagged:.3f} of {len(without)} text-free images flagged"


@pytest.mark.parametrize("engine", ["tesserocr", "pytesseract"])
def test_check_tesseract_names_missing_language_and_binary(monkeypatch, engine):
    check_tesseract(OcrConfig(languages="eng", engine=engine))
    with pytest.raises(JobError, match=r"no language pack for xyz.*apt-get install tesseract-ocr-xyz"):
        check_tesseract(OcrConfig(languages="eng+xyz", engine=engine))
    # The tesseract binary is needed by the pytesseract fallback only (the in-process engine has its own).
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    if engine == "pytesseract":
        with pytest.raises(JobError, match="apt-get install tesseract-ocr"):
            check_tesseract(OcrConfig(engine=engine))
    else:
        check_tesseract(OcrConfig(engine=engine))


@pytest.mark.parametrize("engine", ["tesserocr", "pytesseract"])
def test_tessdata_dir_is_where_the_languages_are_read(tmp_path, engine):
    """`ocr.tessdata_dir`: the languages are those found there (the installed English model, renamed), for
    the check and for reading; a directory without language data is an error that names the field."""
    (tmp_path / "mine.traineddata").symlink_to(Path(ocr_module.tessdata_dir()) / "eng.traineddata")
    cfg = OcrConfig(languages="mine", tessdata_dir=str(tmp_path), engine=engine)
    check_tesseract(cfg)
    with pytest.raises(JobError, match=r"no language pack for eng .*add eng.traineddata to ocr.tessdata_dir"):
        check_tesseract(OcrConfig(languages="eng", tessdata_dir=str(tmp_path), engine=engine))
    with pytest.raises(JobError, match=r"ocr.tessdata_dir: no \*.traineddata in '.*nothing'"):
        check_tesseract(OcrConfig(tessdata_dir=str(tmp_path / "nothing"), engine=engine))
    data, text = render_case(0)
    read = OcrText(cfg).read(data)
    assert read == OcrText(OcrConfig(engine=engine)).read(data) and read.lower() == text.lower()
    assert OcrText(cfg).engine == engine
    with pytest.raises(RuntimeError):  # an engine pointed at the default data: no language "mine" there
        OcrText(OcrConfig(languages="mine", engine="tesserocr")).read(data)


def test_auto_engine_is_in_process_and_falls_back_to_pytesseract(monkeypatch):
    from vlmforge.pipeline.enrich import ocr as ocr_module

    assert OcrText(OcrConfig()).engine == "tesserocr"
    monkeypatch.setattr(ocr_module, "tesserocr_usable", lambda directory=None: False)
    assert OcrText(OcrConfig()).engine == "pytesseract"
    with pytest.raises(JobError, match="pip install tesserocr"):
        check_tesseract(OcrConfig(engine="tesserocr"))


def test_engines_read_the_same_text():
    """The in-process engine and a tesseract process per image read the rendered cases alike."""
    seeds = range(12)
    fast, slow = OcrText(OcrConfig(engine="tesserocr")), OcrText(OcrConfig(engine="pytesseract"))
    pairs = [(text, fast.read(data), slow.read(data)) for data, text in map(render_case, seeds)]
    assert all(a == b for _, a, b in pairs), pairs
    # 11 of 12 exact but for letter case (the colour-keyed crop of case 4 reads "July" for "july"): case 9's
    # small "Leaders" is detected as a fragment, its line crop loses the last letter
    assert sum(text.lower() == (a or "").lower() for text, a, _ in pairs) >= 11, pairs
    assert fast.api is not None and slow.api is None  # one engine, reused for every image


def test_in_process_words_as_tesserocr_maps_them_and_nothing_logged(caplog):
    """Word confidences from tesserocr's result iterator equal its MapWordConfidences (whole numbers), and a
    crop where nothing is recognised gives [] without the warning MapWordConfidences logs for it (one a
    tesseract run in a Ray worker's log)."""
    stage = OcrText(OcrConfig(engine="tesserocr"))
    data, text = render_case(0)
    line = Image.open(io.BytesIO(data)).convert("L")
    for grey, psm in ((line, 11), (Image.new("L", (5, 5), 255), 7)):
        got = stage.words(grey, psm, 10.0)
        mapped = [(w, float(c)) for w, c in stage.api.MapWordConfidences()]
        assert [(w.text, w.confidence) for w in got] == mapped
    assert [r.name for r in caplog.records if "No text returned" in r.getMessage()] == ["tesserocr"]
    caplog.clear()
    assert got == [] and stage.words(Image.new("L", (5, 5), 255), 7, 10.0) == []
    words = stage.words(line, 11, 10.0)
    assert " ".join(w.text for w in words).split() == text.split()
    assert not caplog.records
    for word in words:  # each word's box holds dark pixels of the line
        assert np.asarray(line.crop(word.box)).min() < 128, word
    process = [w for w in OcrText(OcrConfig(engine="pytesseract")).words(line, 11, 10.0) if w.text.strip()]
    assert [w.text for w in process] == [w.text for w in words]  # a tesseract process: the same words, boxes
    assert all(np.abs(np.subtract(a.box, b.box)).max() <= 2 for a, b in zip(process, words, strict=True))


def test_marks_by_a_line_are_whitened_and_the_line_read_again(monkeypatch):
    """Specks by a word, read as marks (tokens without a letter or digit), pull tesseract's confidence in
    the word down until the line reads as texture; with the marks' boxes whitened it reads surely."""
    font = _font_path("DejaVuSerif.ttf")
    rng = random.Random(39)  # drawn until the specks spoil the first read (with tesseract 5.5's eng model)
    crop = Image.new("L", (300, 60), 255)
    draw = ImageDraw.Draw(crop)
    draw.text((60, 12), "conditions", font=ImageFont.truetype(str(font), 24), fill=0)
    for _ in range(rng.randint(2, 5)):
        x, y = rng.randint(5, 50), rng.randint(15, 45)
        draw.rectangle((x, y, x + rng.randint(1, 8), y + rng.randint(1, 4)), fill=0)
    stage = OcrText(OcrConfig(engine="tesserocr"))
    stage._deadline = time.monotonic() + 60
    first = stage.words(crop, ocr_module.LINE_PSM, 10.0)
    assert any(not any(ch.isalnum() for ch in w.text) for w in first)  # marks were read
    assert stage._judged(first)[0] == []  # and the line alone reads as texture
    stage.counters.clear()
    kept, mass, mean, _ = stage._read_crop(crop)
    assert kept == ["conditions"] and mean >= ocr_module.SURE_CONFIDENCE
    assert stage.counters["ocr_run"] == 2
    clean = Image.new("L", (300, 60), 255)
    ImageDraw.Draw(clean).text((60, 12), "conditions", font=ImageFont.truetype(str(font), 24), fill=0)
    stage.counters.clear()
    assert stage._read_crop(clean)[0] == ["conditions"] and stage.counters["ocr_run"] == 1  # no marks: once
    # pytesseract's rows for the page, block and line levels are empty tokens spanning the line: not marks
    word = ocr_module.Word
    reads = [[word("", -1.0, (0, 0, 300, 60)), word("conditions", 50.0, (62, 16, 237, 42))]]
    monkeypatch.setattr(stage, "_run", lambda image, psm: reads.pop())
    assert stage._read_crop(clean)[0] == [] and not reads  # read once, as texture


@pytest.mark.parametrize("engine", ["tesserocr", "pytesseract"])
def test_ocr_stage_nulls_and_counts_bad_input_and_timeouts(engine):
    data, text = render_case(0)
    blank = Image.new("RGB", (200, 120), (90, 140, 200))
    buf = io.BytesIO()
    blank.save(buf, "PNG")
    batch = pa.table({"id": ["bad", "text", "none", "blank"], "image": [b"not an image", data, None,
                                                                       buf.getvalue()]})
    ocr = OcrText(OcrConfig(engine=engine))
    out = ocr(batch)
    assert out.column_names == ["id", "ocr_text"]
    assert out.column("id").to_pylist() == ["bad", "text", "none", "blank"]
    assert out.column("ocr_text").to_pylist() == [None, text, None, None]
    assert ocr.counters["bad_image"] == 2 and ocr.counters["images"] == 4
    # the blank image skipped tesseract: its runs (one per detected line and polarity) are the text image's
    alone = OcrText(OcrConfig(engine=engine))
    alone.read(data)
    assert ocr.counters["ocr_run"] == alone.counters["ocr_run"] >= 1 and ocr.counters["with_text"] == 1

    slow = OcrText(OcrConfig(timeout_s=1e-6, engine=engine))  # the image's time is up after decode
    assert slow(batch.slice(1, 1)).column("ocr_text").to_pylist() == [None]
    assert slow.counters["timeouts"] == 1


def test_clip_words_and_text_cap():
    from vlmforge.pipeline.enrich.ocr import clip_words

    assert clip_words("  a\n b\tc ", 10) == "a b c"
    assert clip_words("hello wonderful world", 17) == "hello wonderful"
    assert clip_words("abcdefghij", 4) == "abcd"
    assert len(clip_words("x " * 300, 200)) == 199


def test_a_line_keeps_its_doubtful_inner_words_and_drops_doubtful_ends():
    found = [("ju", 20.0), ("for", 96.0), ("substantéiel", 39.0), ("amount", 92.0), ("ee", 12.0)]
    assert _kept_in_line(found, 40.0) == ["for", "substantéiel", "amount"]
    assert _kept_in_line([("ee", 12.0), ("Rese", 16.0)], 40.0) == []


def test_a_text_read_as_texture_in_its_colour_is_read_again_by_its_luma(monkeypatch):
    """A dev case (seed 4, 12 px, on a photo): every colour-keyed read of its text is under line_confidence
    (mean ~56: texture let in by the key) and gave nothing; the same crop keyed by the text's luma reads it.
    Without the read of doubt (DOUBT_LETTERS out of reach) it is read as nothing again. (Whitening the specks
    at the line's ends, or the marks read by its words, also reads it: both are off here.)"""
    case = render(4 * 1_000_003 + 84, SIZES[84 % len(SIZES)])
    assert case.text == "particular work, or (3)"
    assert OcrText(OcrConfig()).read(case.image) == case.text
    monkeypatch.setattr(line_clean, "SPECK", 0.0)
    monkeypatch.setattr(ocr_module, "_whitened", lambda image, boxes: image)
    assert OcrText(OcrConfig()).read(case.image) == case.text
    monkeypatch.setattr(ocr_module, "DOUBT_LETTERS", 10_000)
    assert OcrText(OcrConfig()).read(case.image) is None


def test_a_line_found_again_in_part_stretches_to_its_detected_row():
    """The text's colour found only the line's last words: it widens to the detected line of its row (same
    height) beyond the box read, not to a taller texture line there; a read reaching the row's ends, or a
    row of other heights, gives none."""
    found = TextLine((289, 127, 387, 136), chars=9, height=7.0, dark=False)
    row = TextLine((181, 122, 388, 143), chars=23, height=7.0, dark=False)
    texture = TextLine((37, 92, 181, 147), chars=9, height=21.0, dark=False)
    wider = _stretched(found, (289, 126, 388, 136), [texture, row])
    assert wider is not None and wider.box == (181, 127, 388, 136) and wider.height == found.height
    assert _stretched(found, (183, 126, 388, 136), [texture, row]) is None
    assert _stretched(found, (289, 126, 388, 136), [texture]) is None
