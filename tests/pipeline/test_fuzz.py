"""Broken and hostile inputs: the job finishes, nothing crashes, every row is accounted with a reason.

Paths that climb out of a JSON-lines manifest's image root (`../../etc/passwd`, symlinks) are refused by
the reader: tests/pipeline/readers/test_readers.py::test_jsonl_paths_stay_inside_root.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as pads
from conftest import ROOT
from helpers import CURATE, encode, jpeg, write_tar
from PIL import Image

MAX_PEAK_RSS = 1 << 30  # any one process of the job (driver, Ray's own, workers); 285 MiB measured


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


class _Filler(io.RawIOBase):
    """A file of `size` bytes, `head` + `fill` repeated + `tail`, produced as read (never whole in memory)."""

    def __init__(self, head: bytes, fill: bytes, tail: bytes, size: int) -> None:
        self.head, self.tail, self.pos, self.size = head, tail, 0, size
        self.block = fill * max(1, (1 << 20) // len(fill))

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            at = self.pos + len(out)
            if at < len(self.head):
                out += self.head[at : at + n - len(out)]
            elif at >= self.size - len(self.tail):
                t = at - (self.size - len(self.tail))
                out += self.tail[t : t + n - len(out)]
            else:
                out += self.block[: min(n - len(out), self.size - len(self.tail) - at)]
        self.pos += n
        return bytes(out)


def _noise_jpeg(seed: int) -> bytes:
    """A JPEG of random pixels: no perceptual-hash neighbour among the other cases' images."""
    arr = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


# Members too large to build in memory, as CASES; a tuple stands for the _Filler(*tuple) written in its place.
# A JSON sidecar is optional metadata (img2dataset's url, sizes ...): when it is too large, too deep or not
# JSON, the reader ignores it (no url) and the pair itself is judged as usual.
HUGE_JSON_BYTES, HUGE_CAPTION_BYTES, DEEP_JSON_LEVELS = 50_000_000, 100_000_000, 100_000
LARGE_CASES = [
    (
        "hugejson",
        [
            ("hugejson.jpg", _noise_jpeg(1)),
            ("hugejson.txt", b"a purple rectangle on the floor"),
            ("hugejson.json", (b'{"url": "http://x/', b"a", b'"}', HUGE_JSON_BYTES)),  # a _Filler
        ],
        None,
    ),
    (
        "deepjson100k",
        [
            ("deepjson100k.jpg", _noise_jpeg(2)),
            ("deepjson100k.txt", b"a cyan circle near the window"),
            ("deepjson100k.json", b"[" * DEEP_JSON_LEVELS + b"]" * DEEP_JSON_LEVELS),  # well-formed
        ],
        None,
    ),
    (
        "caption100mb",
        [
            ("caption100mb.jpg", _noise_jpeg(3)),
            ("caption100mb.txt", (b"", b"word ", b"", HUGE_CAPTION_BYTES)),
        ],
        ("read", "caption_too_large"),
    ),
]


def _write_large_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for _, members, _ in LARGE_CASES:
            for name, data in members:
                f = _Filler(*data) if isinstance(data, tuple) else io.BytesIO(data)
                info = tarfile.TarInfo(name)
                info.size = f.size if isinstance(f, _Filler) else len(data)
                tar.addfile(info, f)


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
    _write_large_tar(tmp_path / "in" / "00004.tar")


def _run_measuring_rss(cmd: list[str], log: Path, timeout: float = 600) -> tuple[int, int, int]:
    """Run `cmd` (which starts its own Ray, so Ray's processes are its descendants), polling the process
    tree; returns (exit code, the largest peak RSS of any one process, the largest summed RSS of the tree)."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    top = psutil.Process(proc.pid)
    peak_one = peak_sum = 0
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            total = 0
            for p in [top, *top.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    status = Path(f"/proc/{p.pid}/status")
                    hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")]
                    peak_one = max(peak_one, rss, int(hwm[0].split()[1]) * 1024 if hwm else 0)
                    total += rss
                except (psutil.Error, OSError):
                    pass  # a process that ended between the listing and the read
            peak_sum = max(peak_sum, total)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    return proc.returncode, peak_one, peak_sum


def test_hostile_webdataset_is_fully_accounted(tmp_path):
    _build(tmp_path)
    out = tmp_path / "out"
    cmd = [
        *CURATE,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        "--set",
        "input.max_caption_bytes=1000000",
    ]
    rc, peak_one, peak_sum = _run_measuring_rss(cmd, tmp_path / "job.log")
    assert rc == 0, (tmp_path / "job.log").read_text()[-4000:]
    mib = 2**20
    print(f"hostile input: peak RSS {peak_one / mib:.0f} MiB in one process, {peak_sum / mib:.0f} MiB summed")
    assert peak_one < MAX_PEAK_RSS, f"a process of the job peaked at {peak_one / 2**20:.0f} MiB"
    manifest = json.loads((out / "manifest.json").read_text())
    kept_rows = pads.dataset(out / "data").to_table(columns=["id", "url"]).to_pylist()
    kept = {r["id"] for r in kept_rows}
    rejected = {r["id"]: r for r in pads.dataset(out / "rejected").to_table().to_pylist()}
    assert not kept & set(rejected)
    t = manifest["totals"]
    assert t["input_rows"] == len(kept) + len(rejected) == t["output_rows"] + t["rejected_rows"]
    for key, _, expected in CASES + LARGE_CASES:
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
    urls = {r["id"]: r["url"] for r in kept_rows}
    assert urls["hugejson"] is None and urls["deepjson100k"] is None  # the sidecars were ignored
    assert "100000000 bytes" in rejected["caption100mb"]["detail"]
