"""Video inputs: webdataset shards of clips, Parquet with video bytes or paths, JSONL naming video files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, outcomes, write_tar

from vlmforge.pipeline.config import CurateConfig, load_config
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.readers import discover_parts
from vlmforge.pipeline.readers.video import read_video_part
from vlmforge.pipeline.sample_data.video import encode, random_clip


@pytest.fixture(scope="module")
def clip() -> bytes:
    return encode(random_clip(random.Random(3), seconds=2.0, size=(128, 96)).frames())


def read_all(path: Path, **video: object) -> pa.Table:
    cfg = CurateConfig.model_validate({"input": {"path": str(path)}, "video": {"enabled": True, **video}})
    return pa.concat_tables(t for part in discover_parts(cfg.input) for t in read_video_part(part, cfg, 2))


def errors(table: pa.Table) -> dict[str, str | None]:
    return dict(zip(table["id"].to_pylist(), table["read_error"].to_pylist(), strict=True))


def test_webdataset_shards_take_any_video_container(tmp_path, clip):
    write_tar(tmp_path / "a.tar", [
        ("k1.mp4", clip), ("k1.txt", b"a square moves"), ("k2.webm", b"\x1aE"), ("k2.txt", b"a circle grows"),
        ("k3.mkv", b"x"), ("k4.txt", b"no video here"), ("k5.mov", b"y"), ("k5.txt", b"\xff\xfe"),
        ("k1.mp4", clip), ("k1.txt", b"again"), ("k6.mp4", clip), ("k6.txt", b"x y"), ("k1.mp4", clip),
    ])  # fmt: skip
    table = read_all(tmp_path)
    assert errors(table) == {
        "k1": None, "k2": None, "k3": "missing_caption", "k4": "missing_video", "k5": "invalid_utf8",
        "k1#1": "duplicate_key", "k6": None, "k1#2": "duplicate_key",
    }  # fmt: skip
    assert table["video_ext"].to_pylist()[:3] == ["mp4", "webm", "mkv"]
    assert table["video"].to_pylist()[0] == clip and table["image"].null_count == table.num_rows


def test_webdataset_video_and_image_shards_share_one_walk(tmp_path, clip):
    """Unsafe members, oversize members, a url sidecar and a shard that breaks mid-stream read as they do
    for images (one tar walk serves both readers)."""
    write_tar(tmp_path / "a.tar", [
        ("k1.mp4", clip), ("k1.txt", b"a square"), ("k1.json", b'{"url": "https://e.x/k1.mp4"}'),
        ("../k2.mp4", clip), ("k2.txt", b"climbs out"), ("k3.mp4", clip * 40), ("k3.txt", b"too big"),
    ])  # fmt: skip
    table = read_all(tmp_path, max_bytes=len(clip) * 2)
    assert errors(table) == {
        "k1": None, "../k2": "unsafe_path", "k2": "missing_video", "k3": "video_too_large_bytes"
    }
    assert table["url"].to_pylist()[0] == "https://e.x/k1.mp4"
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[:600])  # inside k1.mp4
    table = read_all(tmp_path, max_bytes=len(clip) * 2)
    assert errors(table) == {"k1": "corrupt_tar"}


def test_parquet_with_a_bytes_column(tmp_path, clip):
    pq.write_table(
        pa.table({"video": [clip, None, b"z" * 50], "caption": ["a square moves", "x", "y"]}),
        tmp_path / "v.parquet",
    )
    table = read_all(tmp_path, max_bytes=40)
    assert errors(table) == {
        "v:0": "video_too_large_bytes",
        "v:1": "missing_video",
        "v:2": "video_too_large_bytes",
    }
    assert errors(read_all(tmp_path)) == {"v:0": None, "v:1": "missing_video", "v:2": None}


def test_parquet_and_jsonl_with_a_path_column(tmp_path, clip):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(clip)
    records = [
        {"path": "clips/a.mp4", "caption": "a square moves"},
        {"path": "clips/gone.mp4", "caption": "x"},
        {"path": "../../etc/passwd", "caption": "y"},
    ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "m.parquet")
    expected = {"m:0": None, "m:1": "missing_video", "m:2": "unsafe_path"}
    assert errors(read_all(tmp_path / "m.parquet", path_column="path")) == expected
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{bad\n")
    table = read_all(tmp_path / "m.jsonl", path_column="path")
    assert errors(table) == {"m:1": None, "m:2": "missing_video", "m:3": "unsafe_path", "m:4": "bad_json"}
    assert table["video"].to_pylist()[0] == clip


def test_a_jsonl_input_curates_end_to_end(tmp_path, clip):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(clip)
    (tmp_path / "in" / "b.mp4").write_bytes(clip[:100])
    lines = [{"video": "a.mp4", "caption": "a green square moves from left to right"},
             {"video": "b.mp4", "caption": "a red circle grows slowly in the middle"}]  # fmt: skip
    (tmp_path / "in" / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = load_config(
        ROOT / "configs/curate/video.yaml",
        [f"input.path={tmp_path / 'in'}", f"output.path={tmp_path / 'out'}", "video.path_column=video"],
    )
    manifest = run_curation(cfg, progress=False, log=lambda _: None)
    kept, rejected = outcomes(tmp_path / "out")
    assert kept == ["clips:1"] and rejected["clips:2"]["reason"] == "corrupt_video"
    assert manifest["totals"]["input_rows"] == 2
