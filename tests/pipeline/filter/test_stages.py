import io

import numpy as np
import pyarrow as pa
import pytest
from helpers import encode, jpeg, raw_batch
from PIL import Image

from vlmforge.pipeline.cache.row_cache import RowCache
from vlmforge.pipeline.config import CaptionConfig, ImageConfig, LanguageConfig
from vlmforge.pipeline.filter.base import Stage, Verdict
from vlmforge.pipeline.filter.caption_checks import CaptionChecks
from vlmforge.pipeline.filter.image_decode import ImageDecode
from vlmforge.pipeline.filter.language_id import LanguageId, script_share
from vlmforge.pipeline.filter.text import caption_key, normalize_for_dedup


class EveryOther(Stage):
    name = "every_other"

    def decide(self, batch):
        return Verdict(
            reasons=[None if i % 2 == 0 else "odd" for i in range(batch.num_rows)],
            details=[str(i) for i in range(batch.num_rows)],
            columns={"flag": pa.array([True] * batch.num_rows)},
        )


def test_base_splits_and_counts_every_row():
    batch = raw_batch([{"caption": f"c{i}"} for i in range(7)])
    stage = EveryOther()
    kept, rejected = stage(batch)
    assert kept.num_rows + rejected.num_rows == 7
    assert kept["id"].to_pylist() == ["row0", "row2", "row4", "row6"]
    assert rejected["reason"].to_pylist() == ["odd"] * 3
    assert rejected["detail"].to_pylist() == ["1", "3", "5"]
    assert set(rejected["stage"].to_pylist()) == {"every_other"}
    assert "flag" in kept.column_names
    assert (stage.stats.rows_in, stage.stats.rows_out, stage.stats.rejected) == (7, 4, 3)


def test_base_refuses_a_short_answer():
    class Broken(Stage):
        name = "broken"

        def decide(self, batch):
            return Verdict(reasons=[None])

    with pytest.raises(RuntimeError, match="answered 1 of 3"):
        Broken()(raw_batch([{}, {}, {}]))


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("", "empty_caption"),
        ("   \n\t ", "empty_caption"),
        ("a", "too_short"),
        ("word " * 400, "too_long"),
        ("IMG_1234.jpg", "boilerplate"),
        ("DSC_0042.JPG", "boilerplate"),
        ("click here", "boilerplate"),
        ("Image", "boilerplate"),
        ("photo 3", "boilerplate"),
        ("https://example.com/cat.html", "url_or_email_only"),
        ("someone@example.org", "url_or_email_only"),
        ("$$$ !!! ### ??? %%%", "symbol_ratio"),
        ("buy buy buy buy buy buy cheap", "repeated_words"),
        ("a red circle on a blue background", None),
        ("two teal stars", None),
        ("photo of a dog on a beach", None),
    ],
)
def test_caption_checks(caption, reason):
    got, _ = CaptionChecks(CaptionConfig()).check(" ".join(caption.split()))
    assert got == reason


def test_caption_stage_keeps_original_and_normalises_whitespace():
    stage = CaptionChecks(CaptionConfig())
    kept, _ = stage(raw_batch([{"caption": "  a red\n circle  "}]))
    assert kept["caption"].to_pylist() == ["a red circle"]
    assert kept["original_caption"].to_pylist() == ["  a red\n circle  "]
    assert kept["caption_words"].to_pylist() == [3]


def test_dedup_normalisation_catches_case_punctuation_whitespace():
    assert normalize_for_dedup("A Red  Circle, on blue!") == normalize_for_dedup("a red circle on blue")
    assert caption_key("A Red  Circle, on blue!") == caption_key("a red circle on blue")
    assert caption_key("a red circle") != caption_key("a red square")


@pytest.fixture(scope="module")
def lang():
    return LanguageId(LanguageConfig())


def test_script_share():
    assert script_share("red circle", {"LATIN"}) == 1.0
    assert script_share("красный круг", {"LATIN"}) == 0.0
    assert script_share("123 !!", {"LATIN"}) == 1.0


@pytest.mark.parametrize(
    ("text", "keep"),
    [
        ("red circle", True),
        ("two green stars", True),
        ("a large blue square next to a small yellow triangle on a white background", True),
        ("cercle rouge", False),
        ("roter Kreis", False),
        ("czerwone koło", False),
        ("красный круг на белом фоне", False),
        ("红色的圆圈", False),
        ("un grand carré bleu à côté d'un petit triangle jaune sur un fond blanc", False),
    ],
)
def test_language_judgement(lang, text, keep):
    _, _, reason, _ = lang.judge_one(text, len(text.split()), lang.predict(text))
    assert (reason is None) == keep


def test_language_records_lang_for_every_kept_row(lang):
    batch = raw_batch([{"caption": "a red circle on a white background"}, {"caption": "roter Kreis"}])
    batch = batch.append_column("caption_words", pa.array([7, 2], pa.int32()))
    kept, rejected = lang(batch)
    assert kept["lang"].to_pylist() == ["en"]
    assert 0 < kept["lang_score"][0].as_py() <= 1
    assert rejected["reason"].to_pylist() == ["wrong_language"]
    assert rejected["detail"][0].as_py().startswith("de:")


def _img_stage(**kw) -> ImageDecode:
    return ImageDecode(ImageConfig(**kw))


def _reason(stage: ImageDecode, data: bytes) -> str | None:
    return stage.verdict(stage.inspect(data))[0]


def test_image_rejections_by_header_and_decode():
    stage = _img_stage()
    good = jpeg((128, 96))
    cases = {
        "ok": (good, None),
        "empty": (b"", "corrupt_image"),
        "text": (b"hello, I am not a JPEG at all", "corrupt_image"),
        "truncated": (good[: len(good) // 2], "truncated_image"),
        "small": (jpeg((32, 32)), "too_small"),
        "aspect": (jpeg((640, 80)), "aspect_ratio"),
    }
    for name, (data, reason) in cases.items():
        assert _reason(stage, data) == reason, name


def test_png_bomb_rejected_from_header_without_decoding():
    # A 1-bit 30000x30000 PNG is tiny on disk but 900M pixels.
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 200_000
    stage = _img_stage()
    assert _reason(stage, bomb) == "decompression_bomb"
    assert stage.stats.counters["decoded"] == 0


def test_too_large_side_rejected():
    assert _reason(_img_stage(max_side=100), jpeg((128, 96))) == "too_large"


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("CMYK", (96, 96), (0, 255, 255, 0)), "JPEG"),
        lambda: encode(Image.new("RGB", (96, 96), (255, 0, 0)).convert("P"), "PNG"),
        lambda: encode(Image.new("RGBA", (96, 96), (255, 0, 0, 0)), "PNG"),
        lambda: encode(Image.fromarray(np.full((96, 96), 40000, np.uint16)), "PNG"),
        lambda: encode(Image.new("L", (96, 96), 128), "JPEG"),
    ],
    ids=["cmyk", "palette", "alpha", "16bit", "grey"],
)
def test_odd_modes_are_normalised_to_rgb(make):
    stage = _img_stage()
    info = stage.inspect(make())
    assert info.reason is None
    assert info.data is not None
    out = Image.open(io.BytesIO(info.data))
    assert out.mode == "RGB" and out.size == (96, 96)


def test_transparent_pixels_become_white_and_16bit_keeps_brightness():
    stage = _img_stage()
    alpha = stage.inspect(encode(Image.new("RGBA", (96, 96), (255, 0, 0, 0)), "PNG"))
    assert np.asarray(Image.open(io.BytesIO(alpha.data))).mean() > 250
    deep = stage.inspect(encode(Image.fromarray(np.full((96, 96), 40000, np.uint16)), "PNG"))
    assert 140 < np.asarray(Image.open(io.BytesIO(deep.data))).mean() < 170  # 40000 >> 8 = 156


def test_animated_gif_keeps_first_frame():
    frames = [Image.new("RGB", (96, 96), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    info = _img_stage().inspect(buf.getvalue())
    assert info.reason is None
    r, g, b = np.asarray(Image.open(io.BytesIO(info.data))).reshape(-1, 3).mean(0)
    assert r > 200 and b < 60


def test_image_memo_decodes_only_the_images_a_looser_threshold_lets_through(tmp_path):
    pngs = [encode(Image.new("P", size), "PNG") for size in [(128, 96), (40, 40)]]
    batch = raw_batch([{"image": d, "caption": "x"} for d in [jpeg((128, 96)), *pngs, b"junk"]])
    batch = batch.append_column("row", pa.array(range(4), pa.int64()))

    def run(min_side: int) -> tuple[ImageDecode, pa.Table]:
        stage = _img_stage(min_side=min_side)
        stage.memo = RowCache(tmp_path / "image.parquet", ImageDecode.measures, "row")
        kept, _ = stage(batch)
        stage.memo.save()
        return stage, kept

    strict, _ = run(64)
    assert strict.stats.counters["decoded"] == 2 and strict.stats.reasons["too_small"] == 1
    loose, kept = run(32)
    # Only the 40 px image, never decoded under min_side 64, is decoded now; the normalised PNG's
    # re-encoded bytes come from the cache.
    assert loose.stats.counters["decoded"] == 1 and loose.stats.counters["cached"] == 3
    fresh_kept, _ = _img_stage(min_side=32)(batch)
    assert kept.equals(fresh_kept) and kept.num_rows == 3
    again, _ = run(32)
    assert "decoded" not in again.stats.counters and again.stats.counters["cached"] == 4


def test_unsupported_format():
    png = encode(Image.new("RGB", (96, 96)), "PNG")
    assert _reason(_img_stage(formats=["JPEG"]), png) == "unsupported_format"


def test_rgb_jpeg_keeps_original_bytes():
    stage = _img_stage()
    data = jpeg((200, 150))
    kept, _ = stage(raw_batch([{"image": data, "caption": "x"}]))
    assert kept["image"][0].as_py() == data
    assert (kept["width"][0].as_py(), kept["height"][0].as_py(), kept["image_format"][0].as_py()) == (
        200,
        150,
        "JPEG",
    )


@pytest.mark.parametrize(
    "caption",
    [
        "view image",
        "untitled image",
        "click here 881",
        "image not found",
        "no description",
        "default image",
        "click to enlarge",
        "stock photo 74",
        "Screenshot_20240709.png",
        "P8565406.JPG",
        "DSCN4233",
        "n/a",
    ],
)
def test_boilerplate_vocabulary(caption):
    assert CaptionChecks(CaptionConfig()).check(caption)[0] == "boilerplate"


@pytest.mark.parametrize("caption", ["view from the bridge", "a photo of a red fox", "stock market chart"])
def test_boilerplate_words_inside_real_captions_are_kept(caption):
    assert CaptionChecks(CaptionConfig()).check(caption)[0] is None


def test_large_jpeg_reports_its_full_size_after_draft_decode():
    stage = _img_stage()
    data = jpeg((1600, 1200))
    info = stage.inspect(data)
    assert (info.reason, info.width, info.height, info.data) == (None, 1600, 1200, None)
    assert stage.stats.counters["decoded"] == 1
