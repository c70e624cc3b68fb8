"""OCR stage with the text detector in front vs tesseract on every image, side by side on the same images.

    .venv/bin/python benchmarks/ocr.py --text 50 --no-text 450

The images are sample-data pictures (vlmforge.pipeline.sample_data, decodable ones only): `--text` drawn
with a known
word or phrase and `--no-text` without, shuffled together. Both contenders are `OcrText` with the default
`OcrConfig`, one with `detect` on, one with it off, run one after the other in this process on one Arrow
batch. Reported: wall time, tesseract runs, and on the text images the character error rate (CER) against
the drawn text and how many outputs the two agree on; on the text-free images, how many got any text.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.pipeline.config import OcrConfig  # noqa: E402
from vlmforge.pipeline.enrich.ocr import OcrText  # noqa: E402
from vlmforge.pipeline.sample_data import write_sample_data  # noqa: E402
from vlmforge.pipeline.sample_data.reading import edit_distance, images_with_text  # noqa: E402


def sample_images(n_text: int, n_plain: int, seed: int) -> list[tuple[str, bytes, str | None]]:
    """(key, image bytes, drawn text) for n_text images with text and n_plain without, shuffled."""
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_data(tmp, n=max(1000, round(n_text / 0.12)), seed=seed)
        texts, plain = [], []
        for key, data, text in images_with_text(Path(tmp)):
            (texts if text else plain).append((key, data, text))
    if len(texts) < n_text or len(plain) < n_plain:
        raise SystemExit(f"sample has {len(texts)} text and {len(plain)} plain images; ask for fewer")
    rows = texts[:n_text] + plain[:n_plain]
    random.Random(seed).shuffle(rows)
    return rows


def run(cfg: OcrConfig, batch: pa.Table) -> tuple[list[str | None], float, OcrText]:
    stage = OcrText(cfg)
    start = time.perf_counter()
    out = stage(batch)
    return out.column("ocr_text").to_pylist(), time.perf_counter() - start, stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=int, default=50, help="images with drawn text")
    parser.add_argument("--no-text", type=int, default=450, help="images without text")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rows = sample_images(args.text, args.no_text, args.seed)
    batch = pa.table({"id": [k for k, _, _ in rows], "image": [d for _, d, _ in rows]})
    truth = [t for _, _, t in rows]
    results = {}
    for name, detect in (("detector + OCR", True), ("OCR on every image", False)):
        texts, seconds, stage = run(OcrConfig(detect=detect), batch)
        results[name] = (texts, seconds, stage)
        print(f"{name}: {seconds:.1f} s, counters {dict(stage.counters)}", file=sys.stderr)

    print(f"{len(rows)} images ({args.text} with text, {args.no_text} without), sample seed {args.seed}\n")
    header = ("contender", "wall s", "images/s", "tesseract runs", "CER, text images", "text-free given text")
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---:|---:|")
    chars = sum(len(t) for t in truth if t)
    for name, (texts, seconds, stage) in results.items():
        errors = sum(min(edit_distance(t, r or ""), len(t)) for t, r in zip(truth, texts, strict=True) if t)
        junk = sum(bool(r) for t, r in zip(truth, texts, strict=True) if not t)
        print(f"| {name} | {seconds:.1f} | {len(rows) / seconds:.1f} | {stage.counters['ocr_run']} | "
              f"{errors / chars:.3f} | {junk} of {args.no_text} |")
    (fast, t_fast, _), (slow, t_slow, _) = results.values()
    same = sum(a == b for t, a, b in zip(truth, fast, slow, strict=True) if t)
    print(f"\nspeed-up: {t_slow / t_fast:.1f}x; same text from both on {same} of {args.text} text images")


if __name__ == "__main__":
    main()
