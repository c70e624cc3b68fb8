"""OCR of a video clip: the image OCR (`OcrText.read_lines`) on a few of its sampled frames, lines merged.

At most `ocr.frames_per_clip` frames are read, evenly spaced over the sampled ones (the middles of equal
spans: a clip's first and last frames are often fades). A title shown for several seconds is read on each
frame that shows it: a line is kept once, at its first appearance, and a line whose words are a run of a line
already kept (a word the detector or tesseract missed on one frame) adds nothing. A frame that does not
decode is skipped and counted (`bad_frame`); a clip is never dropped, at worst its text is null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmforge.pipeline.enrich.ocr import OcrText


def evenly_spaced(n: int, k: int) -> list[int]:
    """Indices of `k` of `n` items, the middles of `k` equal spans (all of them when `n` <= `k`)."""
    if n <= k:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]


def merge_lines(frames: list[list[str]]) -> list[str]:
    """The lines of consecutive frames, each text once, in order of first appearance (case and spacing
    aside; a line whose words are a run of an earlier line's words is that line again)."""
    kept: list[str] = []
    keys: list[str] = []
    for lines in frames:
        for line in lines:
            key = " ".join(line.casefold().split())
            if key and not any(f" {key} " in f" {seen} " for seen in keys):
                kept.append(line)
                keys.append(key)
    return kept


def clip_text(ocr: OcrText, frames: list[bytes | None]) -> str | None:
    """The OCR text of one clip from its sampled JPEG `frames` (time order), or None when none is read."""
    ocr.counters["clips"] += 1
    read: list[list[str]] = []
    for i in evenly_spaced(len(frames), ocr.cfg.frames_per_clip):
        ocr.counters["frames"] += 1
        lines = ocr.read_lines(frames[i])
        if lines is None:
            ocr.counters["bad_frame"] += 1
            continue
        read.append(lines)
    return ocr.finish(merge_lines(read))
