"""Synthetic video-text clips with known defects, written as webdataset shards (`key.mp4` + `key.txt` +
`key.json`) plus `ground_truth.jsonl`.

Each clean clip is one shape that moves, grows, shrinks, appears, disappears or changes colour over a
textured background of its own (so distinct clips stay far apart in pHash); its caption needs time to be
right ("a red square moves from left to right"). Defects are planted in the shares of `VIDEO_PROPORTIONS`
and `VIDEO_EXPECTED` says which stage and reason should drop each. Clips are H.264 in MP4, encoded with
PyAV (libx264 single-threaded, bit-exact flags), so the same seed writes byte-identical shards.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from vlmforge.common.files import write_bytes

from .generator import allocate
from .scenes import load_font
from .writer import add_member

FPS = 8
SIZES = ((128, 96), (160, 120), (144, 112))
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30),
    "purple": (140, 50, 170), "orange": (245, 140, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}  # fmt: skip
SHAPES = ("square", "circle", "triangle")
MOTIONS = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top", "grows", "shrinks",
           "appears", "disappears", "changes_colour")  # fmt: skip
# Places on the clip's middle line that a route clip visits, each once, in the caption's order.
PLACES = ("left", "middle", "right")
# Colours a "turns" clip's shape takes, each once, in the caption's order.
TURNS = ("red", "green", "blue")

VIDEO_PROPORTIONS: dict[str, float] = {
    "clean": 0.58,
    "non_english": 0.08,
    "exact_duplicate": 0.04,
    "reencoded": 0.04,
    "resized": 0.04,
    "trimmed": 0.04,
    "zero_bytes": 0.03,
    "truncated": 0.03,
    "too_short": 0.03,
    "too_small": 0.03,
    "audio_only": 0.03,
    "frame_bomb": 0.03,
}
VIDEO_EXPECTED: dict[str, tuple[str | None, str | None]] = {
    "clean": (None, None),
    "non_english": ("language", "wrong_language"),
    "exact_duplicate": ("exact_dedup", "duplicate_image"),
    "reencoded": ("video_near_dedup", "near_duplicate_video"),
    "resized": ("video_near_dedup", "near_duplicate_video"),
    "trimmed": ("video_near_dedup", "near_duplicate_video"),
    "zero_bytes": ("video", "corrupt_video"),
    "truncated": ("video", "corrupt_video"),
    "too_short": ("video", "too_short"),
    "too_small": ("video", "too_small"),
    "audio_only": ("video", "no_video_stream"),
    "frame_bomb": ("video", "decode_bomb"),
}
DUPLICATES = ("exact_duplicate", "reencoded", "resized", "trimmed")
# Motion captions in other languages (with the shape and colour left out, they still read as foreign).
FOREIGN = {
    "de": ["ein {c} Quadrat bewegt sich von links nach rechts", "ein Kreis wird langsam größer",
           "ein Dreieck erscheint in der Mitte des Bildes", "das Quadrat verschwindet nach einer Weile"],
    "fr": ["un carré {c} se déplace de gauche à droite", "un cercle grandit lentement",
           "un triangle apparaît au milieu de l'image", "le carré disparaît après un moment"],
    "es": ["un cuadrado {c} se mueve de izquierda a derecha", "un círculo crece lentamente",
           "un triángulo aparece en el centro de la imagen", "el cuadrado desaparece después de un rato"],
}  # fmt: skip
GENERATOR_VERSION = 3


@dataclass
class Clip:
    """A clean clip's script: what is drawn on which background, and how it changes over time."""

    width: int
    height: int
    seconds: float
    shape: str
    colour: str
    motion: str
    to_colour: str
    background: np.ndarray = field(repr=False)
    route: tuple[str, ...] = ()  # motion "route"/"turns": the places visited / colours taken, in order

    def caption(self) -> str:
        return "".join(text for text, _ in self.caption_parts())

    def time_spans(self) -> list[tuple[int, int]]:
        """Character spans [start, end) of the caption's words that only the frames' order decides: the
        direction (left/right, top/bottom), grows/shrinks, appears/disappears, a colour change's colours,
        a route's places or a turns clip's colours. Any single frame decides the other clip words."""
        spans, at = [], 0
        for text, timed in self.caption_parts():
            if timed:
                spans.append((at, at + len(text)))
            at += len(text)
        return spans

    def caption_parts(self) -> list[tuple[str, bool]]:
        """The caption in pieces, each with whether only the frames' order decides it (time_spans)."""
        if self.motion in ("route", "turns"):  # only the order is worth saying: colour and shape left out
            route = self.motion == "route"
            head, sep = ("a shape goes to the ", ", then the ") if route else ("a shape turns ", ", then ")
            parts = [(head, False)]
            for k, step in enumerate(self.route):
                parts += [(sep, False)] * (k > 0) + [(step, True)]
            return parts
        obj = (f"a {self.colour} {self.shape} ", False)
        ends = {"left_to_right": ("left", "right"), "right_to_left": ("right", "left"),
                "top_to_bottom": ("top", "bottom"), "bottom_to_top": ("bottom", "top")}  # fmt: skip
        if self.motion in ends:
            a, b = ends[self.motion]
            the = "the " if a in ("top", "bottom") else ""
            return [obj, (f"moves from {the}", False), (a, True), (f" to {the}", False), (b, True)]
        if self.motion == "appears":
            return [obj, ("appears", True), (" in the middle", False)]
        if self.motion == "changes_colour":
            return [(f"a {self.shape} changes colour from ", False), (self.colour, True), (" to ", False),
                    (self.to_colour, True)]  # fmt: skip
        return [obj, (self.motion, True)]  # grows, shrinks, disappears

    def frames(self, fps: int = FPS) -> list[np.ndarray]:
        """The clip's RGB frames. A motion's script runs from the first frame to the last one on a whole
        second and holds still after: the frames a sampler of one frame a second takes (the curation video
        stage's default) sit at script times k / K, symmetric about the middle, so a motion and its reverse
        (left/right, top/bottom, grows/shrinks, appears/disappears, a colour change's two colours) show the
        same sampled frames in opposite orders: only the order tells them apart."""
        n = max(1, round(self.seconds * fps))
        last = max(1, (n - 1) // fps * fps)  # the last frame on a whole second
        w, h = self.width, self.height
        base = min(w, h) // 3  # a third of the short side: a few patches even at the encoder's 32 px
        m = self.motion
        forward = m in ("left_to_right", "top_to_bottom", "grows", "appears", "changes_colour")
        out = []
        for i in range(n):
            k = min(i, last) if forward else last - min(i, last)  # the frame of the motion played forward
            u = k / last
            img = Image.fromarray(self.background)
            cx, cy, size, colour, visible = w / 2, h / 2, base, COLOURS[self.colour], True
            if m in ("left_to_right", "right_to_left"):  # edge to edge: as far as the shape can travel
                cx = base / 2 + (w - base) * u
            elif m in ("top_to_bottom", "bottom_to_top"):
                cy = base / 2 + (h - base) * u
            elif m in ("grows", "shrinks"):  # from 0.6 to 1.4 of the size: visible in every frame
                size = base * (0.6 + 0.8 * u)
            elif m in ("appears", "disappears"):
                visible = u >= 0.4
            elif m == "changes_colour" and 2 * k >= last:  # a middle frame blends: the same either way
                a, b = COLOURS[self.colour], COLOURS[self.to_colour]
                colour = b if 2 * k > last else tuple((x + y) // 2 for x, y in zip(a, b, strict=True))
            elif m in ("route", "turns"):  # equal stays at each place or colour
                place = self.route[min(i * len(self.route) // n, len(self.route) - 1)]
                if m == "route":
                    cx = base + (w - 2 * base) * PLACES.index(place) / (len(PLACES) - 1)
                else:
                    colour = COLOURS[place]
            if visible:
                draw_shape(ImageDraw.Draw(img), self.shape, cx, cy, size, colour)
            out.append(np.asarray(img))
        return out


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, colour: tuple
) -> None:
    r = size / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)


def muted(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    """A grey of random brightness with a faint tint: no background block reads as a shape's colour."""
    grey = rng.randrange(low, high)
    return tuple(min(255, max(0, grey + rng.randrange(-12, 13))) for _ in range(3))


def background(rng: random.Random, w: int, h: int) -> np.ndarray:
    """Large random blocks in muted tones: low-frequency structure (pHash reads brightness) that sets each
    clip's pHashes apart."""
    img = Image.new("RGB", (w, h), muted(rng, 60, 200))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 7)):
        x0, y0 = rng.randrange(-w // 4, w), rng.randrange(-h // 4, h)
        box = (x0, y0, x0 + rng.randrange(w // 4, w), y0 + rng.randrange(h // 4, h))
        fill = muted(rng, 30, 230)
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
    return np.asarray(img)


def random_clip(
    rng: random.Random, seconds: float | None = None, size: tuple[int, int] | None = None
) -> Clip:
    w, h = size or rng.choice(SIZES)
    colour, to_colour = rng.sample([c for c in COLOURS if c not in ("white", "black")], 2)
    return Clip(w, h, seconds if seconds is not None else rng.choice((3.0, 4.0, 5.0)), rng.choice(SHAPES),
                colour, rng.choice(MOTIONS), to_colour, background(rng, w, h))  # fmt: skip


def route_clip(
    rng: random.Random, seconds: float | None = None, size: tuple[int, int] | None = None
) -> Clip:
    """A clip whose caption only the frames' order decides: a shape of any colour visits every one of
    PLACES in a random order ("a shape goes to the right, then the left, then the middle"). Any single
    frame, or the frames in another order, tell nothing of that order."""
    clip = random_clip(rng, seconds, size)
    clip.motion, clip.route = "route", tuple(rng.sample(PLACES, len(PLACES)))
    return clip


def turns_clip(
    rng: random.Random, seconds: float | None = None, size: tuple[int, int] | None = None
) -> Clip:
    """Like route_clip, but the shape stays in the middle and takes every one of TURNS in a random order
    ("a shape turns blue, then red, then green"): colours the encoder reads in any single frame."""
    clip = random_clip(rng, seconds, size)
    clip.motion, clip.route = "turns", tuple(rng.sample(TURNS, len(TURNS)))
    return clip


CLIP_KINDS = {"motion": random_clip, "route": route_clip, "turns": turns_clip}  # ClipShape.captions


def encode(frames: list[np.ndarray], fps: int = FPS, codec: str = "libx264", crf: int = 23) -> bytes:
    """H.264 (or MPEG-4 part 2) in MP4, deterministic: one encoder thread, bit-exact flags."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "crf": str(crf), "threads": "1"}
        else:
            stream.codec_context.options = {"qscale": str(max(1, crf // 6)), "threads": "1"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def audio_only(seconds: float = 2.0, rate: int = 16000) -> bytes:
    """An MP4 holding one AAC audio stream and no video."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("aac", rate=rate)
        tone = np.sin(np.arange(1024) * 0.05, dtype=np.float32)[None] * 0.1
        for i in range(int(seconds * rate / 1024)):
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def claim_frames(data: bytes, frames: int) -> bytes:
    """`data` (an MP4) whose `stts` box claims `frames` samples in its first entry: a header promising far
    more frames than the file holds."""
    at = data.find(b"stts")
    if at < 0:
        raise ValueError("no stts box")
    out = bytearray(data)
    struct.pack_into(">I", out, at + 4 + 8, frames)  # after version/flags and entry_count
    return bytes(out)


def subtitled(frames: list[np.ndarray], text: str, seconds: tuple[int, ...], fps: int = FPS,
              px: int = 30) -> list[np.ndarray]:
    """`frames` with `text` as a subtitle (white DejaVu Sans Bold, `px` tall, on a black band in the lower
    third) on the frames of the given `seconds`: text a clip's OCR should read once."""
    font = load_font("DejaVuSans-Bold.ttf", px)
    out = []
    for i, frame in enumerate(frames):
        if i // fps in seconds:
            img = Image.fromarray(frame)
            draw, top = ImageDraw.Draw(img), img.height * 2 // 3
            draw.rectangle((0, top - px // 4, img.width, top + px * 4 // 3), fill="black")
            draw.text((px, top), text, font=font, fill="white")
            frame = np.asarray(img)
        out.append(frame)
    return out


def resize_frames(frames: list[np.ndarray], factor: float) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    size = (round(w * factor / 2) * 2, round(h * factor / 2) * 2)
    return [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames]


@dataclass
class VideoRow:
    key: str
    kind: str
    data: bytes
    caption: str
    lang: str = "en"
    duplicate_of: str | None = None
    time_spans: list[tuple[int, int]] | None = None  # Clip.time_spans of the caption; None: not a clip's

    def truth(self) -> dict:
        stage, reason = VIDEO_EXPECTED[self.kind]
        spans = None if self.time_spans is None else [list(s) for s in self.time_spans]
        return {"key": self.key, "kind": self.kind, "expected_stage": stage, "expected_reason": reason,
                "lang": self.lang, "duplicate_of": self.duplicate_of, "bytes": len(self.data),
                "time_spans": spans}  # fmt: skip


@dataclass(frozen=True)
class ClipShape:
    """Clean clips' size (default: one of SIZES), duration (default: 3, 4 or 5 s), frame rate, and what
    their captions say (a key of CLIP_KINDS: "motion", the default, or "route" / "turns": only the
    order)."""

    size: tuple[int, int] | None = None
    seconds: float | None = None
    fps: int = FPS
    captions: str = "motion"
    grain: float = 0.0  # std (levels) of fresh noise on every frame (5: web bitrates, ~0.8 Mbit/s at 360p)

    def __post_init__(self) -> None:
        if self.captions not in CLIP_KINDS:
            raise ValueError(f"captions: {self.captions!r} is not one of {sorted(CLIP_KINDS)}")
        if self.grain < 0:
            raise ValueError(f"grain: {self.grain} is negative")


KEEP_ORIGINALS = 4  # clean clips held (with their frames) for duplicates to copy: bounds memory


def with_grain(frames: list[np.ndarray], grain: float, key: str) -> list[np.ndarray]:
    """`frames` with fresh Gaussian noise of std `grain` on each (seeded by the row's key): flat synthetic
    frames encode at tens of kbit/s and decode far cheaper than camera footage of the same size."""
    if not grain:
        return frames
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return [np.clip(f + grain * rng.standard_normal(f.shape, np.float32), 0, 255).astype(np.uint8)
            for f in frames]


def generate_video_rows(n: int, seed: int, shard_size: int, shape: ClipShape = ClipShape()) -> list[VideoRow]:
    """`n` rows of seeded kinds; every duplicate copies an earlier clean clip (each at most once)."""
    rng = random.Random(f"video/{seed}")
    kinds = [k for k, c in allocate(n, VIDEO_PROPORTIONS).items() for _ in range(c)]
    rng.shuffle(kinds)
    rows: list[VideoRow] = []
    originals: list[tuple[str, Clip, list[np.ndarray], bytes, str]] = []  # unused clean clips
    pending: list[str] = []  # duplicates drawn before any clean clip was free: placed at later clean slots
    for i, kind in enumerate(kinds):
        key = f"{i // shard_size:05d}{i % shard_size:04d}"
        r = random.Random(f"video/{seed}/{i}")
        if kind in DUPLICATES and not originals:
            pending.append(kind)
            kind = "clean"
        elif kind == "clean" and pending and originals:
            kind = pending.pop()
        rows.append(make_row(kind, key, r, originals, shape))
        del originals[:-KEEP_ORIGINALS]
    return rows


def make_row(kind: str, key: str, rng: random.Random, originals: list, shape: ClipShape) -> VideoRow:
    """One row of `kind`; a clean row joins `originals`, a duplicate consumes the oldest there."""
    if kind in DUPLICATES:
        okey, clip, frames, data, caption = originals.pop(0)
        if kind == "exact_duplicate":
            out = data
        elif kind == "reencoded":
            out = encode(frames, shape.fps, codec="mpeg4", crf=30)
        elif kind == "resized":  # smaller: the original survives
            out = encode(resize_frames(frames, rng.choice((0.75, 0.875))), shape.fps)
        else:  # trimmed: the first second cut
            out = encode(frames[shape.fps :], shape.fps)
        return VideoRow(key, kind, out, caption, duplicate_of=okey, time_spans=clip.time_spans())
    clip = CLIP_KINDS[shape.captions](rng, shape.seconds, shape.size)
    if kind == "too_short":
        clip = random_clip(rng, seconds=0.5)
    elif kind == "too_small":
        clip = random_clip(rng, size=(32, 24))
    frames = with_grain(clip.frames(shape.fps), shape.grain, key)
    data = encode(frames, shape.fps)
    caption, spans = clip.caption(), clip.time_spans()
    if kind == "clean":
        originals.append((key, clip, frames, data, caption))
        return VideoRow(key, kind, data, caption, time_spans=spans)
    if kind == "non_english":
        lang = rng.choice(sorted(FOREIGN))
        text = rng.choice(FOREIGN[lang]).format(c={"de": "rotes", "fr": "rouge", "es": "rojo"}[lang])
        return VideoRow(key, kind, data, text, lang=lang)
    if kind == "zero_bytes":
        data = b""
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "audio_only":
        data = audio_only()
    elif kind == "frame_bomb":
        data = claim_frames(data, 100_000)
    return VideoRow(key, kind, data, caption, time_spans=spans)


def _write_shard(path: Path, rows: list[VideoRow]) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            add_member(tar, f"{row.key}.mp4", row.data)
            add_member(tar, f"{row.key}.json", json.dumps({"key": row.key, "status": "success"}).encode())
            add_member(tar, f"{row.key}.txt", row.caption.encode("utf-8"))
    write_bytes(path, buf.getvalue())


def write_video_sample_data(
    out_dir: str | Path, n: int, seed: int = 0, shard_size: int = 100, shape: ClipShape = ClipShape()
) -> dict:
    """Write `n` clips as webdataset shards plus ground_truth.jsonl and ground_truth_summary.json; returns
    the summary. Shards of an earlier, larger run in `out_dir` are removed."""
    if n < 0 or not 1 <= shard_size <= 10_000:
        raise ValueError("need n >= 0 and 1 <= shard_size <= 10000 (keys hold 4 digits per shard)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = generate_video_rows(n, seed, shard_size, shape)
    shards = []
    for start in range(0, n, shard_size):
        name = f"{len(shards):05d}.tar"
        _write_shard(out / name, rows[start : start + shard_size])
        shards.append(name)
    for stale in out.glob("[0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in shards:
            stale.unlink()
    truth = [r.truth() for r in rows]
    write_bytes(
        out / "ground_truth.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth).encode()
    )
    kinds = Counter(t["kind"] for t in truth)
    summary = {
        "generator_version": GENERATOR_VERSION, "kind": "video", "n": n, "seed": seed, "fps": shape.fps,
        "shard_size": shard_size, "shards": shards, "counts": {k: kinds.get(k, 0) for k in VIDEO_PROPORTIONS},
        "target_proportions": dict(VIDEO_PROPORTIONS),
        "expected": {k: {"stage": s, "reason": r} for k, (s, r) in VIDEO_EXPECTED.items()},
    }  # fmt: skip
    write_bytes(out / "ground_truth_summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
