"""Video header checks and frame sampling with PyAV: each clip is opened once, checked from its container and
stream headers, then decoded once.

Header checks come before any frame is decoded: no video stream, codec, declared size (`decode_bomb` for
absurd dimensions, `too_small`), declared frame count (`decode_bomb`) and duration (`too_short`,
`too_long`). Decoding then stops at `video.max_frames` sampled frames, at `video.max_decoded_frames` decoded
ones, or at the header's duration, so a header that lies costs a bounded amount. Frames are taken at
`video.fps` (the first frame at or after each sampling time), scaled down to `video.frame_side` and stored
as JPEG (`video.jpeg_quality`); each sampled frame's 64-bit pHash goes with them for near-duplicate clips. The
pHash is the image hash's (`dedup.phash`) over a 32x32 greyscale thumbnail taken by swscale straight from
the decoded frame (an area average of its luma) rather than from the stored RGB frame through Pillow: ~0.02
against ~0.12 ms for a 320x240 source (about even at 1080p), within a few bits of the RGB frame's pHash, and
copies of a clip (re-encoded, resized, trimmed) land as close. Any error FFmpeg raises becomes a
`corrupt_video` rejection naming it: a hostile clip never takes the worker down with it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
from av.video.reformatter import VideoReformatter
from PIL import Image

from vlmforge.pipeline.config import VideoConfig
from vlmforge.pipeline.dedup.phash import THUMB_SIDE, phashes
from vlmforge.pipeline.filter.base import Stage, Verdict

# FFmpeg logs every damaged packet of a hostile clip to stderr; the rejection detail says what matters.
av.logging.set_level(av.logging.PANIC)
logging.getLogger("libav").setLevel(logging.CRITICAL)


# One swscale pass per sampled frame (colour conversion and downscale together) and one for its thumbnail; a
# reformatter per kind of output keeps its context while frame sizes repeat, where a frame's own `to_image`
# (or one reformatter alternating between two outputs) builds one per call.
_REFORMATTER = VideoReformatter()
_THUMBNAILER = VideoReformatter()


@dataclass
class Clip:
    """What the video stage found in one clip."""

    reason: str | None = None
    detail: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    fps: float | None = None
    frames: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)

    def fail(self, reason: str, detail: str) -> Clip:
        self.reason, self.detail = reason, detail
        return self


def _seconds(value: int | None, base: Fraction | None) -> float | None:
    return float(value * base) if value is not None and base is not None else None


def check_header(cfg: VideoConfig, clip: Clip, declared_frames: int) -> tuple[str, str] | None:
    """The checks on a clip's declared codec, size, frame count and duration, before any decode."""
    w, h = clip.width or 0, clip.height or 0
    if clip.codec not in cfg.codecs:
        return "unsupported_codec", str(clip.codec)
    if w * h > cfg.max_pixels or max(w, h) > cfg.max_side:
        return "decode_bomb", f"{w}x{h}"
    if min(w, h) < cfg.min_side:
        return "too_small", f"{w}x{h}"
    if declared_frames > cfg.max_declared_frames:
        return "decode_bomb", f"header declares {declared_frames} frames"
    if clip.duration is not None:
        if clip.duration < cfg.min_duration_s:
            return "too_short", f"{clip.duration:.2f} s"
        if clip.duration > cfg.max_duration_s:
            return "too_long", f"{clip.duration:.1f} s"
    return None


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _rgb_image(frame: av.VideoFrame, width: int, height: int) -> Image.Image:
    """The frame as an RGB image of `width` x `height`: one single-threaded swscale pass (its default, a
    thread per core, cost more in hand-offs than a frame of this size takes, and more again on a loaded
    machine), then one copy into Pillow (the plane's rows may be padded, which `line_size` tells it). Not
    swscale's 4-byte rgb0, which Pillow could map without the copy: its unscaled path garbles the last
    columns of some widths (322, 324) in this FFmpeg."""
    rgb = _REFORMATTER.reformat(frame, width, height, format="rgb24", interpolation="AREA", threads=1)
    plane = rgb.planes[0]
    return Image.frombuffer("RGB", (width, height), plane, "raw", "RGB", plane.line_size, 1)


def _thumbnail(frame: av.VideoFrame) -> np.ndarray:
    """The frame's pHash thumbnail: swscale's area average of its luma at 32x32 (one single-threaded pass
    from the decoded planes: no RGB conversion, no greyscale image of the full frame)."""
    side = THUMB_SIDE
    plane = _THUMBNAILER.reformat(frame, side, side, format="gray", interpolation="AREA", threads=1).planes[0]
    return np.frombuffer(plane, np.uint8).reshape(side, plane.line_size)[:, :side].astype(np.float64)


def _scaled(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most `side` (even, as YUV 4:2:0 likes)."""
    if max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def inspect_clip(data: bytes | None, cfg: VideoConfig) -> Clip:
    """Open, check and sample one clip; any failure is a reason on the returned Clip."""
    clip = Clip()
    if not data:
        return clip.fail("corrupt_video", "0 bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except Exception as e:  # FFmpeg raises many types on hostile input
        return clip.fail("corrupt_video", f"{type(e).__name__}: {str(e)[:100]}")
    try:
        with container:
            return _sample(container, clip, cfg)
    except Exception as e:
        return clip.fail("corrupt_video", f"{type(e).__name__}: {str(e)[:100]}")


def _sample(container: av.container.InputContainer, clip: Clip, cfg: VideoConfig) -> Clip:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        return clip.fail("no_video_stream", f"{'/'.join(kinds)} streams only")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    clip.codec, clip.width, clip.height = ctx.name, ctx.width, ctx.height
    clip.fps = float(rate) if rate else None
    clip.duration = _seconds(stream.duration, stream.time_base)
    if clip.duration is None and container.duration is not None:
        clip.duration = container.duration / av.time_base
    declared = stream.frames or 0
    if not declared and clip.duration and clip.fps:
        declared = round(clip.duration * clip.fps)
    if (bad := check_header(cfg, clip, declared)) is not None:
        return clip.fail(*bad)
    step, start, decoded = 1.0 / cfg.fps, None, 0
    target = 0.0
    # A clip's frames lie before its declared end: once the next sampling time reaches it, nothing later
    # would be sampled, so the rest of the stream is not decoded.
    end = clip.duration if clip.duration is not None else float("inf")
    thumbs: list[np.ndarray] = []
    last = 0.0
    for frame in container.decode(stream):
        decoded += 1
        if frame.width * frame.height > cfg.max_pixels:  # the stream changed size past its header
            return clip.fail("decode_bomb", f"frame {decoded} is {frame.width}x{frame.height}")
        t = frame.time if frame.time is not None else decoded / (clip.fps or 1.0)
        start = t if start is None else start
        last = t - start
        if last + 1e-6 >= target:
            img = _rgb_image(frame, *_scaled(frame.width, frame.height, cfg.frame_side))
            clip.frames.append(_jpeg(img, cfg.jpeg_quality))
            clip.times.append(round(last, 3))
            thumbs.append(_thumbnail(frame))
            target = len(clip.frames) * step
            if len(clip.frames) >= cfg.max_frames or target >= end:
                break
        if decoded >= cfg.max_decoded_frames:
            break
    if not clip.frames:
        return clip.fail("corrupt_video", "no decodable frame")
    if clip.duration is None:  # no header duration: what was decoded decides
        clip.duration = last + (1.0 / clip.fps if clip.fps else 0.0)
        if (bad := check_header(cfg, clip, declared)) is not None:
            return clip.fail(*bad)
    clip.hashes = [int(h) for h in phashes(np.stack(thumbs))]
    return clip


class VideoDecode(Stage):
    """Rejects clips that are corrupt, truncated, audio-only, too short/long/small, of an unsupported codec
    or bomb-sized; samples the others' frames."""

    name = "video"

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def decide(self, batch: pa.Table) -> Verdict:
        clips = [inspect_clip(b, self.cfg) for b in batch.column("video").to_pylist()]
        self.stats.counters["decoded"] += sum(1 for c in clips if c.frames)
        self.stats.counters["frames"] += sum(len(c.frames) for c in clips)
        return Verdict(
            reasons=[c.reason for c in clips],
            details=[c.detail for c in clips],
            columns={
                "video_codec": pa.array([c.codec for c in clips], pa.string()),
                "width": pa.array([c.width for c in clips], pa.int32()),
                "height": pa.array([c.height for c in clips], pa.int32()),
                "duration_s": pa.array([c.duration for c in clips], pa.float32()),
                "fps": pa.array([c.fps for c in clips], pa.float32()),
                "frames": pa.array([c.frames for c in clips], pa.list_(pa.binary())),
                "frame_times": pa.array([c.times for c in clips], pa.list_(pa.float32())),
                "frame_phashes": pa.array([c.hashes for c in clips], pa.list_(pa.uint64())),
            },
        )
