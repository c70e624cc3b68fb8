"""The synthetic clips' pictures: the caption's colour is the shape's alone, the shape is big enough to
read at the tiny encoder's resolution (the video recipe's video gap depends on both), and a motion's
time-dependent words are decided by the sampled frames' order alone (its time share depends on that)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from vlmforge.pipeline.sample_data.video import (
    COLOURS,
    PLACES,
    TURNS,
    ClipShape,
    generate_video_rows,
    random_clip,
    route_clip,
    turns_clip,
)


def saturation(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1).astype(int) - pixels.min(axis=-1)


def test_backgrounds_are_muted_and_only_the_shape_carries_a_colour():
    for seed in range(12):
        clip = random_clip(random.Random(seed), seconds=2.0)
        assert saturation(clip.background).max() <= 24, seed  # grey with a faint tint
        frame = clip.frames(fps=4)[-1 if clip.motion == "appears" else 0]
        coloured = saturation(frame) > 60
        base = min(clip.width, clip.height) // 3
        smallest = (base * 0.6) ** 2 / 2  # a triangle at its smallest size (shrinks ends, grows starts there)
        assert coloured.sum() >= smallest, (seed, clip.motion)
        ys, xs = np.nonzero(coloured)
        assert np.ptp(ys) <= base * 1.4 + 2 and np.ptp(xs) <= base * 1.4 + 2  # one shape, not the background


def test_a_moving_shape_spans_a_third_of_the_short_side():
    rng = random.Random(0)
    clip = next(c for c in (random_clip(rng, seconds=2.0) for _ in range(50)) if c.motion == "left_to_right")
    coloured = saturation(clip.frames(fps=4)[0]) > 60
    ys, xs = np.nonzero(coloured)
    assert np.ptp(xs) + 1 >= min(clip.width, clip.height) // 3 - 1
    assert xs.mean() < clip.width / 2  # starts on the left


REVERSE = {"left_to_right": "right_to_left", "top_to_bottom": "bottom_to_top", "grows": "shrinks",
           "appears": "disappears"}  # fmt: skip


def sampled(clip, fps: int = 8) -> list[np.ndarray]:
    """The frames one a second (the curation video stage's default sampling) takes."""
    return clip.frames(fps)[::fps]


@pytest.mark.parametrize("seconds", [3.0, 4.0, 5.0])
def test_a_motion_and_its_reverse_differ_only_in_the_sampled_frames_order(seconds):
    rng = random.Random(int(seconds))
    clips = [random_clip(rng, seconds=seconds) for _ in range(60)]
    pairs = [(c, dataclasses.replace(c, motion=REVERSE[c.motion])) for c in clips if c.motion in REVERSE]
    pairs += [(c, dataclasses.replace(c, colour=c.to_colour, to_colour=c.colour))
              for c in clips if c.motion == "changes_colour"]  # fmt: skip
    assert {a.motion for a, _ in pairs} == {*REVERSE, "changes_colour"}
    for a, b in pairs:
        frames, mirrored = sampled(a), sampled(b)[::-1]
        assert len(frames) == round(seconds) and a.caption() != b.caption()
        assert all(np.array_equal(x, y) for x, y in zip(frames, mirrored, strict=True)), a.motion
        assert not all(np.array_equal(x, y) for x, y in zip(frames, sampled(b), strict=True)), a.motion


def test_a_growing_shape_is_visible_from_its_first_frame_and_a_mover_crosses_the_frame():
    rng = random.Random(3)
    clips = [random_clip(rng, seconds=3.0) for _ in range(60)]
    grows = next(c for c in clips if c.motion == "grows")
    base = min(grows.width, grows.height) // 3
    first, last = (saturation(f) > 60 for f in (sampled(grows)[0], sampled(grows)[-1]))
    assert first.sum() >= (base * 0.6) ** 2 / 2 and last.sum() > 4 * first.sum()
    mover = next(c for c in clips if c.motion == "left_to_right")
    xs = [np.nonzero(saturation(f) > 60)[1] for f in sampled(mover)]
    assert xs[0].min() <= 1 and xs[-1].max() >= mover.width - 2  # from edge to edge


def test_a_route_clip_shows_its_places_in_the_captions_order():
    for seed in range(6):
        clip = route_clip(random.Random(seed), seconds=3.0)
        assert sorted(clip.route) == sorted(PLACES)
        assert clip.caption() == "a shape goes to the " + ", then the ".join(clip.route)
        for frame, place in zip(clip.frames(fps=1), clip.route, strict=True):  # one frame a place
            xs = np.nonzero(saturation(frame) > 60)[1]
            third = min(int(xs.mean() * 3 / clip.width), 2)
            assert PLACES[third] == place, (seed, clip.route)


def test_route_captions_are_an_option_and_motion_stays_the_default():
    motion = generate_video_rows(12, seed=0, shard_size=100)
    route = generate_video_rows(12, seed=0, shard_size=100, shape=ClipShape(captions="route"))
    clean = [r.caption for r in route if r.kind == "clean"]
    assert clean and all(c.startswith("a shape goes to the ") for c in clean)
    assert not any(r.caption.startswith("a shape goes") for r in motion)
    turns = generate_video_rows(12, seed=0, shard_size=100, shape=ClipShape(captions="turns"))
    assert all(r.caption.startswith("a shape turns ") for r in turns if r.kind == "clean")
    with pytest.raises(ValueError, match="captions: 'order' is not one of"):
        ClipShape(captions="order")


def test_a_turns_clip_shows_its_colours_in_the_captions_order():
    for seed in range(6):
        clip = turns_clip(random.Random(seed), seconds=3.0)
        assert sorted(clip.route) == sorted(TURNS)
        assert clip.caption() == "a shape turns " + ", then ".join(clip.route)
        for frame, colour in zip(clip.frames(fps=1), clip.route, strict=True):
            coloured = frame[saturation(frame) > 60].astype(int)
            assert len(coloured), (seed, colour)
            assert np.abs(coloured.mean(axis=0) - COLOURS[colour]).max() < 20, (seed, colour)


def timed_words(clip) -> list[str]:
    caption = clip.caption()
    return [caption[a:b] for a, b in clip.time_spans()]


def test_the_time_spans_cover_exactly_the_words_the_frames_order_decides():
    clips = [random_clip(random.Random(seed), seconds=2.0) for seed in range(80)]
    by_motion = {c.motion: c for c in clips}
    assert set(by_motion) == {"left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top", "grows",
                              "shrinks", "appears", "disappears", "changes_colour"}  # fmt: skip
    assert timed_words(by_motion["left_to_right"]) == ["left", "right"]
    assert timed_words(by_motion["bottom_to_top"]) == ["bottom", "top"]
    assert timed_words(by_motion["grows"]) == ["grows"]
    assert timed_words(by_motion["appears"]) == ["appears"]  # not "middle": any frame with the shape shows it
    change = by_motion["changes_colour"]
    assert timed_words(change) == [change.colour, change.to_colour]
    # a clip's colour and shape are not timed; spans are ordered, apart, and on word boundaries
    for clip in clips:
        caption, spans = clip.caption(), clip.time_spans()
        if clip.motion != "changes_colour":
            assert clip.colour not in timed_words(clip) and clip.shape not in timed_words(clip)
        assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:], strict=False)), spans
        assert all(caption[a:b].isalpha() and caption[b:b + 1] in ("", " ", ",") for a, b in spans)
    route, turns = route_clip(random.Random(1)), turns_clip(random.Random(1))
    assert timed_words(route) == list(route.route) and timed_words(turns) == list(turns.route)


def test_the_ground_truth_carries_each_captions_time_spans():
    rows = generate_video_rows(30, seed=0, shard_size=100)
    for row in rows:
        truth = row.truth()
        if row.kind == "non_english":
            assert truth["time_spans"] is None
            continue
        assert truth["time_spans"], row.kind
        assert all(row.caption[a:b].isalpha() for a, b in truth["time_spans"])
