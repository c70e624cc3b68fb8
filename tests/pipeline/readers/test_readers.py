import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import jpeg, write_tar

from vlmforge.pipeline.config import InputConfig
from vlmforge.pipeline.readers import InputError, detect_format, discover_parts, read_part
from vlmforge.pipeline.readers.webdataset import split_key


def _read_all(path, **cfg) -> pa.Table:
    input_cfg = InputConfig(path=str(path), **cfg)
    tables = [t for part in discover_parts(input_cfg) for t in read_part(part, input_cfg, batch_rows=3)]
    return pa.concat_tables(tables)


def _errors(table: pa.Table) -> dict:
    return dict(zip(table["id"].to_pylist(), table["read_error"].to_pylist(), strict=True))


def test_split_key_follows_webdataset():
    assert split_key("000001.jpg") == ("000001", "jpg")
    assert split_key("dir/abc.seg.TXT") == ("dir/abc", "seg.txt")


def test_webdataset_pairs_and_defects(tmp_path):
    img = jpeg()
    write_tar(
        tmp_path / "00000.tar",
        [
            ("a.jpg", img),
            ("a.txt", b"a red square"),
            ("a.json", b'{"url": "https://x/a.jpg"}'),
            ("b.jpg", img),  # no caption
            ("c.txt", b"only a caption"),  # no image
            ("d.jpg", img),
            ("d.txt", b"\xff\xfe bad utf8"),  # invalid UTF-8
            ("e.jpg", img),
            ("e.txt", b"x" * 2000),  # caption over the byte limit
            ("a.jpg", img),
            ("a.txt", b"the same key again"),  # duplicate key
            ("/abs/f.jpg", img),
            ("/abs/f.txt", b"absolute"),
            ("g.jpg", img),
            ("g.txt", b"fine"),
            ("g.json", b"[" * 100_000),  # hostile JSON is ignored
        ],
    )
    t = _read_all(tmp_path, max_caption_bytes=1000)
    errors = _errors(t)
    assert errors == {
        "a": None,
        "b": "missing_caption",
        "c": "missing_image",
        "d": "invalid_utf8",
        "e": "caption_too_large",
        "a#1": "duplicate_key",
        "/abs/f": "unsafe_path",
        "g": None,
    }
    assert t.filter(pa.compute.equal(t["id"], "a"))["url"].to_pylist() == ["https://x/a.jpg"]


def test_truncated_tar_keeps_what_was_read_and_accounts_the_rest(tmp_path):
    write_tar(tmp_path / "x.tar", [(f"{i}.jpg", jpeg()) for i in range(3)] + [("2.txt", b"c")])
    data = (tmp_path / "x.tar").read_bytes()
    (tmp_path / "x.tar").write_bytes(data[: len(data) // 2])
    t = _read_all(tmp_path)
    assert "corrupt_tar" in set(t["read_error"].to_pylist())


def test_not_a_tar_at_all(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"this is no tar file" * 10)
    t = _read_all(tmp_path)
    assert t.num_rows == 1 and t["read_error"][0].as_py() == "corrupt_tar"


def test_parquet_bytes_column_and_ids(tmp_path):
    img = jpeg()
    pq.write_table(
        pa.table({"caption": ["one", None, "three"], "image": [img, img, None]}),
        tmp_path / "p.parquet",
        row_group_size=2,
    )
    t = _read_all(tmp_path / "p.parquet", rows_per_part=1)
    assert t["id"].to_pylist() == ["p:0", "p:1", "p:2"]
    assert t["read_error"].to_pylist() == [None, "missing_caption", "missing_image"]


def test_parquet_hf_image_struct_and_id_column(tmp_path):
    img = jpeg()
    pq.write_table(
        pa.table({"key": ["k1"], "text": ["hi there"], "img": [{"bytes": img, "path": "x.jpg"}]}),
        tmp_path / "p.parquet",
    )
    t = _read_all(tmp_path, caption_column="text", image_column="img", id_column="key")
    assert t["id"].to_pylist() == ["k1"] and t["image"][0].as_py() == img


def test_parquet_missing_column_named(tmp_path):
    pq.write_table(pa.table({"caption": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="input.image_column/image_path_column 'image' not found"):
        _read_all(tmp_path)


def test_jsonl_paths_stay_inside_root(tmp_path):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(jpeg())
    (tmp_path / "secret.jpg").write_bytes(jpeg())
    os.symlink(tmp_path / "secret.jpg", root / "img" / "link.jpg")
    os.mkfifo(root / "img" / "pipe.jpg")  # opening it for reading must not block the reader
    lines = [
        {"image": "img/a.jpg", "caption": "fine"},
        {"image": "../secret.jpg", "caption": "escape"},
        {"image": "../../etc/passwd", "caption": "escape"},
        {"image": "img/link.jpg", "caption": "symlink out"},
        {"image": "img/none.jpg", "caption": "missing"},
        {"image": "img/pipe.jpg", "caption": "a FIFO"},
        {"image": "img", "caption": "a directory"},
        {"image": "img/sub/../a.jpg", "caption": "dots inside root"},
        {"caption": "no image key"},
        {"image": "img/a.jpg"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n" + json.dumps([1, 2]) + "\n"
    text += json.dumps({"image": "img/a.jpg", "caption": "x" * 70_000}) + "\n"
    (root / "m.jsonl").write_text(text)
    t = _read_all(root / "m.jsonl", max_caption_bytes=1000)
    assert t["read_error"].to_pylist() == [
        None,
        "unsafe_path",
        "unsafe_path",
        "unsafe_path",
        "missing_image",
        "missing_image",
        "missing_image",
        None,
        "missing_image",
        "missing_caption",
        "bad_json",
        "bad_json",
        "line_too_large",
    ]
    assert t["id"].to_pylist()[:2] == ["m:1", "m:2"]


def test_format_detection_and_errors(tmp_path):
    assert detect_format([tmp_path / "a.tar", tmp_path / "b.tar", tmp_path / "x.json"]) == "webdataset"
    # One shard next to more metadata files (sample-data's ground truth) is still a webdataset input.
    assert detect_format([tmp_path / "a.tar", tmp_path / "g.jsonl", tmp_path / "s.json"]) == "webdataset"
    assert detect_format([tmp_path / "a.parquet", tmp_path / "g.jsonl"]) == "parquet"
    with pytest.raises(InputError, match="cannot detect"):
        detect_format([tmp_path / "a.csv"])
    with pytest.raises(InputError, match="not found"):
        discover_parts(InputConfig(path=str(tmp_path / "missing")))


def test_parts_are_deterministic_and_split_parquet(tmp_path):
    pq.write_table(
        pa.table({"caption": ["c"] * 10, "image": [b"x"] * 10}), tmp_path / "a.parquet", row_group_size=2
    )
    parts = discover_parts(InputConfig(path=str(tmp_path), rows_per_part=4))
    assert [p.name for p in parts] == ["00000-0000", "00000-0001", "00000-0002"]
    assert [p.first_row for p in parts] == [0, 4, 8]
    assert parts == discover_parts(InputConfig(path=str(tmp_path), rows_per_part=4))
