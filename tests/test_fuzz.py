"""Broken and hostile inputs: the job finishes, nothing crashes, every row is accounted with a reason."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import pyarrow.dataset as pads
from conftest import curate
from helpers import encode, jpeg, write_tar
from PIL import Image


def _png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares a huge size over a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_with_declared_size(width: int, height: int) -> bytes:
    data = bytearray(jpeg((64, 64)))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bad_crc_png() -> bytes:
    data = bytearray(encode(Image.new("RGB", (96, 96), (10, 200, 10)), "PNG"))
    data[30] ^= 0xFF  # inside IHDR: its CRC no longer matches
    return bytes(data)


# (key, members, expected (stage, reason) or None when the row must be kept)
CASES = [
    (
        "truncated",
        [("truncated.jpg", jpeg((200, 200))[:700]), ("truncated.txt", b"a cut off photo of a lake")],
        ("image", "truncated_image"),
    ),
    (
        "zerobytes",
        [("zerobytes.jpg", b""), ("zerobytes.txt", b"an empty file of a dog")],
        ("image", "corrupt_image"),
    ),
    (
        "pngbomb",
        [("pngbomb.png", _png_bomb_header(100_000, 100_000)), ("pngbomb.txt", b"a huge white field")],
        ("image", "decompression_bomb"),
    ),
    (
        "jpegbomb",
        [("jpegbomb.jpg", _jpeg_with_declared_size(60_000, 60_000)), ("jpegbomb.txt", b"a huge black field")],
        ("image", "decompression_bomb"),
    ),
    (
        "textjpg",
        [("textjpg.jpg", b"<html>404 not found</html>"), ("textjpg.txt", b"a text file of a bird")],
        ("image", "corrupt_image"),
    ),
    (
        "badutf8",
        [("badutf8.jpg", jpeg()), ("badutf8.txt", b"caf\xe9 \xff\xfe in paris")],
        ("read", "invalid_utf8"),
    ),
    (
        "hugecaption",
        [("hugecaption.jpg", jpeg()), ("hugecaption.txt", b"word " * 220_000)],
        ("read", "caption_too_large"),
    ),
    (
        "longcaption",
        [("longcaption.jpg", jpeg()), ("longcaption.txt", b"a long story " * 3000)],
        ("caption", "too_long"),
    ),
    ("notxt", [("notxt.jpg", jpeg())], ("read", "missing_caption")),
    ("noimg", [("noimg.txt", b"a caption without its picture")], ("read", "missing_image")),
    (
        "nanjson",
        [
            ("nanjson.jpg", jpeg((128, 96), (10, 10, 250))),
            ("nanjson.txt", b"a blue rectangle in the sky"),
            ("nanjson.json", b'{"url": NaN, "width": Infinity}'),
        ],
        None,
    ),
    (
        "deepjson",
        [
            ("deepjson.jpg", jpeg((128, 96), (250, 250, 10))),
            ("deepjson.txt", b"a yellow rectangle on the table"),
            ("deepjson.json", b"[" * 50_000),
        ],
        None,
    ),
    (
        "dupkey",
        [("dupkey.jpg", jpeg((128, 96), (90, 10, 10))), ("dupkey.txt", b"a dark red wall in the city")],
        None,
    ),
    (
        "zwhitespace",
        [("zwhitespace.jpg", jpeg()), ("zwhitespace.txt", b" \n\t  ")],
        ("caption", "empty_caption"),
    ),
    (
        "controlchars",
        [("controlchars.jpg", jpeg()), ("controlchars.txt", b"\x00\x01\x02\x03\x04\x05\x06")],
        ("caption", "symbol_ratio"),
    ),
    ("emoji", [("emoji.jpg", jpeg()), ("emoji.txt", "🔥🔥🔥 !!! ???".encode())], ("caption", "symbol_ratio")),
    (
        "badcrc",
        [("badcrc.png", _bad_crc_png()), ("badcrc.txt", b"a green square on a wall")],
        ("image", "corrupt_image"),
    ),
    (
        "absolute",
        [("/etc/absolute.jpg", jpeg()), ("/etc/absolute.txt", b"a path outside the tar")],
        ("read", "unsafe_path"),
    ),
    (
        "dotdot",
        [("../dotdot.jpg", jpeg()), ("../dotdot.txt", b"a path that climbs out")],
        ("read", "unsafe_path"),
    ),
    (
        "tinyimg",
        [("tinyimg.jpg", jpeg((8, 8))), ("tinyimg.txt", b"a very small red square")],
        ("image", "too_small"),
    ),
]


def _build(tmp_path):
    (tmp_path / "in").mkdir()
    members = [m for _, ms, _ in CASES for m in ms]
    members += [("dupkey.jpg", jpeg((128, 96), (91, 11, 11))), ("dupkey.txt", b"the same key again")]
    write_tar(tmp_path / "in" / "00000.tar", members)
    # A symlink member and a directory member.
    with tarfile.open(tmp_path / "in" / "00001.tar", "w") as tar:
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        cap = b"a link to somewhere else"
        info = tarfile.TarInfo("link.txt")
        info.size = len(cap)
        tar.addfile(info, io.BytesIO(cap))
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    # A shard cut in the middle of a member, and a file that is no tar at all.
    write_tar(tmp_path / "in" / "00002.tar", [("cut.jpg", jpeg((300, 300))), ("cut.txt", b"cut in half")])
    data = (tmp_path / "in" / "00002.tar").read_bytes()
    (tmp_path / "in" / "00002.tar").write_bytes(data[:900])
    (tmp_path / "in" / "00003.tar").write_bytes(b"definitely not a tar archive\n" * 40)


def test_hostile_webdataset_is_fully_accounted(tmp_path, ray_local):
    _build(tmp_path)
    manifest = curate(tmp_path / "in", tmp_path / "out", "input.max_caption_bytes=1000000")
    kept = set(pads.dataset(tmp_path / "out" / "data").to_table(columns=["id"])["id"].to_pylist())
    rejected = {r["id"]: r for r in pads.dataset(tmp_path / "out" / "rejected").to_table().to_pylist()}
    assert not kept & set(rejected)
    t = manifest["totals"]
    assert t["input_rows"] == len(kept) + len(rejected) == t["output_rows"] + t["rejected_rows"]
    for key, _, expected in CASES:
        key = f"/etc/{key}" if key == "absolute" else ("../dotdot" if key == "dotdot" else key)
        if expected is None:
            assert key in kept, (key, rejected.get(key))
        else:
            assert (rejected[key]["stage"], rejected[key]["reason"]) == expected, (key, rejected[key])
    assert (rejected["dupkey#1"]["stage"], rejected["dupkey#1"]["reason"]) == ("read", "duplicate_key")
    assert rejected["link"]["reason"] == "unsafe_member"
    assert rejected["cut"]["reason"] == "corrupt_tar"
    assert rejected["00003#unreadable"]["reason"] == "corrupt_tar"
    assert len({(r["stage"], r["reason"]) for r in rejected.values()}) >= 15
    assert all(r["reason"] for r in rejected.values())
