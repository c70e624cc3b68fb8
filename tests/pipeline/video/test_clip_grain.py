"""Grain on the sample clips: deterministic, off by default, and it raises the bitrate to web video's."""

import pytest

from vlmforge.pipeline.sample_data.video import ClipShape, generate_video_rows


def _clean_bytes(shape: ClipShape) -> list[bytes]:
    rows = generate_video_rows(6, seed=3, shard_size=100, shape=shape)
    return [r.data for r in rows if r.kind == "clean"]


def test_grain_is_seeded_and_raises_the_bitrate():
    flat = _clean_bytes(ClipShape(size=(160, 96), seconds=2, fps=8))
    grained = _clean_bytes(ClipShape(size=(160, 96), seconds=2, fps=8, grain=5))
    assert grained == _clean_bytes(ClipShape(size=(160, 96), seconds=2, fps=8, grain=5))
    assert flat == _clean_bytes(ClipShape(size=(160, 96), seconds=2, fps=8, grain=0))
    assert len(grained) == len(flat) > 0
    assert sum(map(len, grained)) > 4 * sum(map(len, flat))


def test_negative_grain_is_refused():
    with pytest.raises(ValueError, match="grain"):
        ClipShape(grain=-1)
