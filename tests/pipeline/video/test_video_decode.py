"""The video stage on hostile and ordinary clips, and the time alignment behind near-duplicate clips."""

from __future__ import annotations

import io
import random

import av
import numpy as np
import pyarrow as pa
import pytest

from vlmforge.pipeline.config import VideoConfig
from vlmforge.pipeline.dedup.phash import hamming, phashes, thumbnail
from vlmforge.pipeline.sample_data.video import (
    FPS,
    audio_only,
    claim_frames,
    encode,
    random_clip,
    resize_frames,
)
from vlmforge.pipeline.video.decode import VideoDecode, _rgb_image, _scaled, _thumbnail, inspect_clip
from vlmforge.pipeline.video.near import aligned_distance

CFG = VideoConfig(enabled=True)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return random_clip(random.Random(1), seconds=4.0, size=(128, 96)).frames()


@pytest.fixture(scope="module")
def mp4(frames) -> bytes:
    return encode(frames)


def webm(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as c:
        s = c.add_stream("libvpx-vp9", rate=FPS)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_a_clip_is_sampled_at_the_configured_rate(mp4, frames):
    clip = inspect_clip(mp4, CFG)
    assert clip.reason is None and (clip.width, clip.height, clip.codec) == (128, 96, "h264")
    assert clip.duration == pytest.approx(4.0) and clip.fps == pytest.approx(FPS)
    assert clip.times == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert len(clip.frames) == len(clip.hashes) == 4
    twice = inspect_clip(mp4, VideoConfig(enabled=True, fps=2.0, max_frames=5))
    assert twice.times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # capped at max_frames


def test_webm_vp9_decodes(frames):
    clip = inspect_clip(webm(frames), CFG)
    assert clip.reason is None and clip.codec == "vp9" and len(clip.frames) == 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "corrupt_video"),
        (bytes(random.Random(0).randbytes(5000)), "corrupt_video"),
        ("truncated", "corrupt_video"),
        ("moov_only", "corrupt_video"),
        ("audio", "no_video_stream"),
        ("frame_bomb", "decode_bomb"),
    ],
)
def test_hostile_clips_are_rejected_with_a_reason(mp4, data, reason):
    hostile = {
        "truncated": mp4[: len(mp4) // 2],
        "moov_only": mp4[-(len(mp4) // 3) :],
        "audio": audio_only(),
        "frame_bomb": claim_frames(mp4, 100_000),
    }.get(data, data)
    clip = inspect_clip(hostile, CFG)
    assert clip.reason == reason and clip.detail and not clip.frames


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"min_duration_s": 5.0}, "too_short"),
        ({"max_duration_s": 3.0}, "too_long"),
        ({"min_side": 100}, "too_small"),
        ({"max_pixels": 128 * 96 - 1}, "decode_bomb"),
        ({"max_side": 127}, "decode_bomb"),
        ({"codecs": ["vp9"]}, "unsupported_codec"),
    ],
)
def test_header_checks_reject_before_any_decode(mp4, settings, reason):
    clip = inspect_clip(mp4, VideoConfig(enabled=True, **settings))
    assert clip.reason == reason and not clip.frames


def test_the_stage_counts_every_row(mp4):
    stage = VideoDecode(CFG)
    batch = pa.table({"id": ["a", "b", "c"], "video": [mp4, b"", None], "caption": ["x", "y", "z"]})
    kept, rejected = stage(batch)
    assert kept["id"].to_pylist() == ["a"] and kept["frames"].to_pylist()[0]
    assert rejected["reason"].to_pylist() == ["corrupt_video", "corrupt_video"]
    assert (stage.stats.rows_in, stage.stats.rows_out) == (3, 1)


def test_copies_align_and_other_clips_do_not(mp4, frames):
    seq = np.array(inspect_clip(mp4, CFG).hashes, np.uint64)
    trimmed = np.array(inspect_clip(encode(frames[FPS:]), CFG).hashes, np.uint64)
    resized = np.array(inspect_clip(encode(resize_frames(frames, 0.75)), CFG).hashes, np.uint64)
    reencoded = np.array(inspect_clip(encode(frames, codec="mpeg4", crf=30), CFG).hashes, np.uint64)
    d, shift = aligned_distance(seq, trimmed, 2, 0.5)
    assert shift == -1 and d <= 4  # the trimmed clip's frame 0 is the original's frame 1
    assert aligned_distance(seq, resized, 2, 0.5)[0] <= 4
    assert aligned_distance(seq, reencoded, 2, 0.5)[0] <= 4
    others = [random_clip(random.Random(s), seconds=4.0, size=(128, 96)).frames() for s in range(2, 8)]
    far = [aligned_distance(seq, np.array(inspect_clip(encode(o), CFG).hashes, np.uint64), 2, 0.5)[0]
           for o in others]  # fmt: skip
    assert min(far) > CFG.near_dedup.max_distance


def test_frame_hashes_from_luma_match_the_rgb_frames(frames):
    """The pHash thumbnail swscale takes from the decoded planes is the picture the stored RGB frame shows:
    its pHash is within a few bits of the one Pillow's greyscale thumbnail of that frame gives."""
    odd = [np.ascontiguousarray(np.pad(f, ((0, 2), (0, 6), (0, 0)), mode="edge")) for f in frames]  # 134x98
    for data in (encode(frames), webm(frames), encode(odd)):
        with av.open(io.BytesIO(data)) as container:
            decoded = list(container.decode(container.streams.video[0]))[::4]
        ours = phashes(np.stack([_thumbnail(f) for f in decoded]))
        rgb = [_rgb_image(f, *_scaled(f.width, f.height, CFG.frame_side)) for f in decoded]
        pillow = phashes(np.stack([thumbnail(img) for img in rgb]))
        d = hamming(ours, pillow)
        assert np.median(d) <= 2 and d.max() <= 6, d
        assert np.corrcoef(_thumbnail(decoded[0]).ravel(), thumbnail(rgb[0]).ravel())[0, 1] > 0.99


def test_damaged_clips_never_raise(mp4):
    """Seeded byte damage anywhere in a clip (header or frames): every one ends with frames or a reason."""
    rng = random.Random(0)
    outcomes = set()
    for _ in range(40):
        data = bytearray(mp4)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        clip = inspect_clip(bytes(data[: rng.randint(len(data) // 2, len(data))]), CFG)
        assert (clip.reason is None) == bool(clip.frames)
        outcomes.add(clip.reason)
    assert "corrupt_video" in outcomes
