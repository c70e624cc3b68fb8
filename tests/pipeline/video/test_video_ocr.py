"""OCR on a clip's sampled frames: the image OCR read on a few frames, their lines merged, appended to the
caption like an image's OCR text."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT

from vlmforge.pipeline.cli import main
from vlmforge.pipeline.config import OcrConfig, VideoConfig, load_config
from vlmforge.pipeline.enrich.clip_text import evenly_spaced, merge_lines
from vlmforge.pipeline.enrich.ocr import OcrText, tesserocr_usable
from vlmforge.pipeline.sample_data.video import encode, random_clip, subtitled
from vlmforge.pipeline.video.decode import inspect_clip

WORD = "HARBOUR"
SECONDS = 6
TEXT_SECONDS = (2, 3, 4)  # the word is on screen for these seconds of the clip
CAPTIONS = {"titled": "a red square moves from left to right", "plain": "a blue circle grows in the middle"}

needs_tesseract = pytest.mark.skipif(not tesserocr_usable(), reason="tesserocr or its language data missing")
# The word is drawn as a subtitle on a black band: white text in a black outline is not read (the image
# OCR's colour key takes the outline for the text).


def clip_bytes(seed: int, text: bool) -> bytes:
    frames = random_clip(random.Random(seed), seconds=SECONDS, size=(320, 180)).frames()
    return encode(subtitled(frames, WORD, TEXT_SECONDS) if text else frames)


@pytest.fixture(scope="module")
def sampled() -> dict[str, list[bytes]]:
    """Each clip's sampled JPEG frames, as the video stage stores them (1 fps: SECONDS frames)."""
    out = {}
    for key, text in (("titled", True), ("plain", False)):
        clip = inspect_clip(clip_bytes(1 if text else 2, text), VideoConfig(enabled=True))
        assert clip.reason is None and len(clip.frames) == SECONDS
        out[key] = clip.frames
    return out


def ocr_rows(model: OcrText, clips: dict[str, list[bytes | None]]) -> dict[str, str | None]:
    batch = pa.table({"id": list(clips), "image": pa.nulls(len(clips), pa.binary()),
                      "frames": pa.array(list(clips.values()), pa.list_(pa.binary()))})
    out = model(batch)
    assert out.column_names == ["id", "ocr_text"] and out["id"].to_pylist() == list(clips)
    return dict(zip(out["id"].to_pylist(), out["ocr_text"].to_pylist(), strict=True))


def test_frames_are_picked_evenly_and_at_most_k():
    assert evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(64, 4) == [8, 24, 40, 56]
    assert evenly_spaced(10, 1) == [5]
    assert evenly_spaced(0, 4) == []


def test_lines_are_merged_once_in_order_of_first_appearance():
    frames = [[], ["Big Sale", "today"], ["big  sale"], ["Sale", "OPEN"], ["Today", "Big Sale"]]
    assert merge_lines(frames) == ["Big Sale", "today", "OPEN"]  # "Sale": a run of an earlier line's words


@needs_tesseract
def test_a_word_on_some_frames_is_read_once_and_a_clip_without_text_gets_none(sampled):
    model = OcrText(OcrConfig())
    texts = ocr_rows(model, sampled)
    assert texts["titled"] is not None and texts["titled"].split().count(WORD) == 1
    assert texts["plain"] is None
    assert model.counters["clips"] == 2 and model.counters["frames"] == 2 * SECONDS
    assert model.counters["with_text"] == 1 and not model.counters["bad_frame"]


@needs_tesseract
def test_at_most_frames_per_clip_are_read_and_bad_frames_are_skipped_with_a_count(sampled):
    model = OcrText(OcrConfig(frames_per_clip=2))
    frames = list(sampled["titled"])
    frames[1] = b"not a jpeg"  # evenly_spaced(6, 2) reads frames 1 and 4: 4 shows the word
    texts = ocr_rows(model, {"titled": frames, "plain": sampled["plain"]})
    assert texts["titled"] == WORD and texts["plain"] is None
    assert model.counters["frames"] == 4 and model.counters["bad_frame"] == 1


def test_a_bad_frames_per_clip_names_the_field():
    with pytest.raises(ValueError, match="frames_per_clip"):
        load_config(ROOT / "configs/curate/video.yaml", ["ocr.frames_per_clip=0"])


@needs_tesseract
def test_the_video_recipe_with_ocr_on_appends_the_text_and_keeps_its_accounting(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    pq.write_table(pa.table({
        "key": list(CAPTIONS), "caption": list(CAPTIONS.values()),
        "video": [clip_bytes(1, True), clip_bytes(2, False)],
    }), src / "clips.parquet")  # fmt: skip
    recipe = str(ROOT / "configs/curate/video.yaml")
    args = ["curate", recipe, "--input", str(src), "--output", str(out), "--no-progress", "--set",
            "ocr.enabled=true", "--set", "diversity.enabled=false", "--set", "input.id_column=key"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert stages["ocr"]["rows_in"] == stages["ocr"]["rows_out"] == 2 and not stages["ocr"]["reasons"]
    assert manifest["totals"]["input_rows"] == manifest["totals"]["output_rows"] == 2
    rows = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    assert rows["titled"]["ocr_text"] == WORD and rows["plain"]["ocr_text"] is None
    assert rows["titled"]["caption"] == f"{CAPTIONS['titled']} {WORD}"
    assert rows["titled"]["original_caption"] == CAPTIONS["titled"]
    assert rows["plain"]["caption"] == CAPTIONS["plain"] and len(rows["plain"]["frames"]) == SECONDS
