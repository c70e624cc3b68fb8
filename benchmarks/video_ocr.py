"""OCR on video clips' sampled frames: cost per clip and words found, for a few `ocr.frames_per_clip`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_ocr.py --clips 40 --seconds 20

Clips are the synthetic ones of `vlmforge sample-data --video` (a shape over a textured background), 384x216,
`--seconds` long; a `--text-share` of them show a word of the sample data's image words as a subtitle
(white on a black band) for `--text-seconds` consecutive seconds at a random start. Each clip is sampled as
the video recipe does (`VideoDecode`'s `inspect_clip`: 1 fps, JPEG frames at most 384 px), then `OcrText`
with the default `OcrConfig` and each `frames_per_clip` reads the batch of clips in this process, one
after the other (the engine loaded before the clock starts). Reported per setting: wall time per clip,
sampled frames read per second, tesseract runs, the clips with text whose word was read (exactly once), and
the clips without text that got any text.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.pipeline.config import OcrConfig, VideoConfig  # noqa: E402
from vlmforge.pipeline.enrich.ocr import OcrText  # noqa: E402
from vlmforge.pipeline.sample_data.video import encode, random_clip, subtitled  # noqa: E402
from vlmforge.pipeline.sample_data.vocab import WORDS_IN_IMAGES  # noqa: E402
from vlmforge.pipeline.video.decode import inspect_clip  # noqa: E402

SIZE = (384, 216)


def sample_clips(n: int, seconds: int, text_share: float, text_seconds: int, seed: int,
                 ) -> tuple[pa.Table, list[str | None]]:
    """A batch of `n` clips' sampled frames (id, image null, frames) and the word each shows (or None)."""
    rng = random.Random(seed)
    frames, words = [], []
    for _ in range(n):
        raw = random_clip(rng, seconds=float(seconds), size=SIZE).frames()
        word = rng.choice(WORDS_IN_IMAGES) if rng.random() < text_share else None
        if word:
            start = rng.randrange(seconds - text_seconds + 1)
            raw = subtitled(raw, word, tuple(range(start, start + text_seconds)))
        clip = inspect_clip(encode(raw), VideoConfig(enabled=True))
        if clip.reason:
            raise SystemExit(f"a synthetic clip failed to sample: {clip.reason} ({clip.detail})")
        frames.append(clip.frames)
        words.append(word)
    batch = pa.table({"id": [f"c{i}" for i in range(n)], "image": pa.nulls(n, pa.binary()),
                      "frames": pa.array(frames, pa.list_(pa.binary()))})
    return batch, words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=20, help="clip length (sampled frames at 1 fps)")
    parser.add_argument("--text-share", type=float, default=0.5, help="share of clips showing a subtitle")
    parser.add_argument("--text-seconds", type=int, default=3, help="how long a subtitle is on screen")
    parser.add_argument("--frames-per-clip", default="2,4,8,64", help="ocr.frames_per_clip values")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    batch, words = sample_clips(args.clips, args.seconds, args.text_share, args.text_seconds, args.seed)
    with_text = sum(w is not None for w in words)
    print(f"{args.clips} clips of {args.seconds} s ({with_text} with a {args.text_seconds} s subtitle), "
          f"sampled in {time.perf_counter() - start:.1f} s")
    print("| frames_per_clip | frames read | ms / clip | frames read / s | tesseract runs | word read once "
          "| text on clips without |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k in map(int, args.frames_per_clip.split(",")):
        ocr = OcrText(OcrConfig(frames_per_clip=k))
        _ = ocr.api  # the engine loads once per worker: not a cost per clip
        start = time.perf_counter()
        texts = ocr(batch)["ocr_text"].to_pylist()
        wall = time.perf_counter() - start
        c = ocr.counters
        pairs = list(zip(texts, words, strict=True))
        found = sum(bool(t) and t.casefold().count(w.casefold()) == 1 for t, w in pairs if w)
        spurious = sum(t is not None for t, w in pairs if w is None)
        print(f"| {k} | {c['frames']} | {1000 * wall / args.clips:.1f} | {c['frames'] / wall:.1f} "
              f"| {c['ocr_run']} | {found}/{with_text} | {spurious}/{args.clips - with_text} |")


if __name__ == "__main__":
    main()
