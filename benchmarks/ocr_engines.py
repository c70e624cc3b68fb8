"""OCR engines side by side: speed on the same sample images, CER on real-font cases, text on blanks.

    OMP_THREAD_LIMIT=1 .venv/bin/python benchmarks/ocr_engines.py --speed 3000 --eval 350
    # tesseract's other models (e.g. tessdata_best) through `ocr.tessdata_dir`, each a row of its own:
    OMP_THREAD_LIMIT=1 .venv/bin/python benchmarks/ocr_engines.py ... --tessdata-dir DIR [DIR ...]
    # RapidOCR (not a dependency) from a side directory:
    #   .venv/bin/pip install --target /tmp/rapid rapidocr_onnxruntime==1.4.4
    OMP_THREAD_LIMIT=1 .venv/bin/python benchmarks/ocr_engines.py ... --rapidocr-path /tmp/rapid

Speed: sample-data pictures (`write_sample_data(seed=11)`, decodable ones; the images the demo recipe's OCR
phase reads), one Arrow batch through `OcrText` with `ocr.engine: pytesseract` (a tesseract process per
image) and `tesserocr` (in-process, one engine reused; also with `ocr.tidy_lines` off, for the cost of
tidying line crops), in this one process, so one core: tesseract runs/s
per core counts only the time inside the engine call, on identical inputs (the same detected, prepared
images). The 100k estimate puts these per-image costs on the demo recipe's 100k counts (RESULTS.md, session
13: 60,959 images reach OCR, 14,280 detected ones read by tesseract, 55.6 s for everything else, 2 cores). It
is a rough guide only: the survivors hold more text than these images and the job adds Ray's costs. The
measure is the real run: `benchmarks/peers.py --only stages --stages-size 100000` on a quiet machine.

Accuracy: `vlmforge.pipeline.enrich.ocr_eval` cases (real text, Debian fonts, photo backgrounds, tilt),
sizes cycling through SIZES, every 8th case blank. Contenders: the OCR stage (tesserocr), the same with
`colour_key` off and session 9's line_confidence (greyscale line crops), with `--oracle` the stage's
reading of each case's ground-truth text box (what a perfect detector would leave), raw tesseract on
the whole greyscale image (psm 11, min confidence 60, in-process), and RapidOCR (PP-OCRv4 on onnxruntime,
models inside its wheel; text joined left to right, score >= 0.5) when `--rapidocr-path` is given, and the
stage reading with the language data of each `--tessdata-dir`.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
from PIL import Image  # noqa: E402

from vlmforge.pipeline.config import OcrConfig  # noqa: E402
from vlmforge.pipeline.enrich.ocr import OcrText, tessdata_dir  # noqa: E402
from vlmforge.pipeline.enrich.ocr_eval import SIZES, Case, cases  # noqa: E402
from vlmforge.pipeline.enrich.text_detect import TextLine, to_grey  # noqa: E402
from vlmforge.pipeline.sample_data import write_sample_data  # noqa: E402
from vlmforge.pipeline.sample_data.reading import edit_distance, images_with_text  # noqa: E402

DEMO_IMAGES, DEMO_DETECTED, DEMO_OTHER_S, DEMO_CORES = 60_959, 14_280, 55.6, 2


class TimedOcr(OcrText):
    """OcrText that adds up the seconds spent inside the engine call."""

    engine_s = 0.0

    def words(self, grey, psm, timeout_s):
        start = time.perf_counter()
        try:
            return super().words(grey, psm, timeout_s)
        finally:
            self.engine_s += time.perf_counter() - start


def speed(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_data(tmp, n=n, seed=11)
        rows = images_with_text(Path(tmp))
    random.Random(11).shuffle(rows)
    batch = pa.table({"id": [k for k, _, _ in rows], "image": [d for _, d, _ in rows]})
    print(f"speed: {len(rows)} sample images (write_sample_data n={n} seed=11), one process\n")
    print("| engine | stage s | images/s | tesseract runs | runs per detected image | s in tesseract | "
          "runs/s per core | ms/image outside tesseract |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    out, rates, costs = {}, {}, {}
    contenders = {  # the last: keyed crops read as keyed (session 10), for the cost of tidying them
        "pytesseract": OcrConfig(engine="pytesseract"), "tesserocr": OcrConfig(engine="tesserocr"),
        "tesserocr, tidy_lines off": OcrConfig(engine="tesserocr", tidy_lines=False),
    }
    for engine, cfg in contenders.items():
        stage = TimedOcr(cfg)
        start = time.perf_counter()
        out[engine] = stage(batch).column("ocr_text").to_pylist()
        wall = time.perf_counter() - start
        runs, detected = stage.counters["ocr_run"], stage.counters["detected"]
        rates[engine] = runs / stage.engine_s
        other_ms = (wall - stage.engine_s) / len(rows) * 1e3
        costs[engine] = (other_ms, stage.engine_s / detected)  # tesseract s per detected image (>= 1 run)
        print(f"| {engine} | {wall:.1f} | {len(rows) / wall:.1f} | {runs} | {runs / detected:.2f} | "
              f"{stage.engine_s:.1f} | {rates[engine]:.1f} | {other_ms:.2f} |")
    same = sum(a == b for a, b in zip(out["pytesseract"], out["tesserocr"], strict=True))
    print(f"\ntesseract runs/s per core: {rates['tesserocr'] / rates['pytesseract']:.1f}x; "
          f"same ocr_text from both engines on {same} of {len(rows)} images; detected images: {detected}")
    for engine, (other_ms, run_s) in costs.items():
        ocr_s = (DEMO_IMAGES * other_ms / 1e3 + DEMO_DETECTED * run_s) / DEMO_CORES
        print(f"100k demo estimate, {engine}: OCR {ocr_s:.0f} s of {ocr_s + DEMO_OTHER_S:.0f} s "
              f"= {ocr_s / (ocr_s + DEMO_OTHER_S):.0%} (({DEMO_IMAGES:,} x {other_ms:.2f} ms + "
              f"{DEMO_DETECTED:,} detected x {run_s * 1e3:.1f} ms) / {DEMO_CORES} cores)")


def _raw_tesseract():
    import tesserocr

    api = tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang="eng", psm=11, oem=tesserocr.OEM.LSTM_ONLY)

    def read(data: bytes) -> str:
        api.SetImage(to_grey(Image.open(io.BytesIO(data))))
        api.Recognize()
        return " ".join(w for w, c in api.MapWordConfidences() if c >= 60 and any(ch.isalnum() for ch in w))

    return read


def _rapidocr(path: str):
    sys.path.append(path)  # after the venv's packages, so numpy and Pillow stay the project's
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(data: bytes) -> str:
        import numpy as np

        result, _ = engine(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, :, ::-1])
        boxes = sorted(result or [], key=lambda r: (round(r[0][0][1] / 20), r[0][0][0]))
        return " ".join(text for _, text, score in boxes if float(score) >= 0.5)

    return read


def _on_true_boxes(cfg: OcrConfig):
    """The OCR stage's reading given a perfect detector: each case's text box (its ink box, both polarities,
    character height 0.6 x the font size) read as one group; blanks have no box and give nothing."""
    stage = OcrText(cfg)

    def read(case: Case) -> str:
        if case.box is None:
            return ""
        with Image.open(io.BytesIO(case.image)) as image:
            grey = to_grey(image)
            colour = image.convert("RGB") if cfg.colour_key else None
        stage._deadline = time.monotonic() + cfg.timeout_s
        group = [TextLine(case.box, len(case.text), 0.6 * case.size, dark) for dark in (True, False)]
        return " ".join(stage._read_line(grey, colour, group, [])[0])

    return read


def accuracy(n: int, seed: int, rapidocr_path: str | None, raw: bool, oracle: bool,
             tessdata_dirs: list[str]) -> None:
    evaluation = cases(n, seed=seed, blank_share=0.125)
    stage, grey_stage = OcrText(OcrConfig()), OcrText(OcrConfig(colour_key=False, line_confidence=50))
    contenders = {
        "OCR stage (tesserocr)": lambda c: stage.read(c.image) or "",
        "OCR stage, colour_key off, line_confidence 50 (session 9)": lambda c: grey_stage.read(c.image) or "",
    }
    if oracle:
        contenders["stage reading ground-truth boxes"] = _on_true_boxes(OcrConfig())
        contenders["stage reading ground-truth boxes, colour_key off"] = _on_true_boxes(
            OcrConfig(colour_key=False)
        )
    for directory in tessdata_dirs:
        reader = OcrText(OcrConfig(tessdata_dir=directory))
        contenders[f"OCR stage, language data of {directory}"] = lambda c, r=reader: r.read(c.image) or ""
    if raw:
        raw_read = _raw_tesseract()
        contenders["raw tesseract"] = lambda c: raw_read(c.image)
    if rapidocr_path:
        rapid_read = _rapidocr(rapidocr_path)
        contenders["RapidOCR 1.4.4 (PP-OCRv4, onnxruntime)"] = lambda c: rapid_read(c.image)
    n_text = sum(bool(c.text) for c in evaluation)
    print(f"\naccuracy: {n} real-font cases ({n_text} with text, {n - n_text} blank), ocr_eval seed {seed}\n")
    print("| contender | CER | " + " | ".join(f"{s} px" for s in SIZES) + " | blanks given text | images/s |")
    print("|---|---:|" + "---:|" * len(SIZES) + "---:|---:|")
    for name, read in contenders.items():
        by_size, spurious = defaultdict(lambda: [0, 0]), 0
        start = time.perf_counter()
        texts = [read(c) for c in evaluation]
        seconds = time.perf_counter() - start
        for case, text in zip(evaluation, texts, strict=True):
            if not case.text:
                spurious += bool(text)
                continue
            by_size[case.size][0] += min(edit_distance(case.text, text), len(case.text))
            by_size[case.size][1] += len(case.text)
        errors, chars = sum(e for e, _ in by_size.values()), sum(c for _, c in by_size.values())
        sizes = " | ".join(f"{by_size[s][0] / by_size[s][1]:.3f}" for s in SIZES)
        print(f"| {name} | {errors / chars:.3f} | {sizes} | {spurious} of {n - n_text} | {n / seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", type=int, default=3000, help="sample pairs to draw images from (0: skip)")
    parser.add_argument("--eval", type=int, default=350, help="real-font cases (0: skip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3],
                        help="ocr_eval seeds, one table each (1 is the development seed)")
    parser.add_argument("--no-raw", action="store_true", help="skip raw tesseract")
    parser.add_argument("--oracle", action="store_true",
                        help="also the stage reading each case's ground-truth text box (no detector errors)")
    parser.add_argument("--rapidocr-path", help="a directory holding rapidocr_onnxruntime and its deps")
    parser.add_argument("--tessdata-dir", nargs="+", default=[],
                        help="directories of other *.traineddata (ocr.tessdata_dir): the stage, one row each")
    args = parser.parse_args()
    if args.speed:
        speed(args.speed)
    if args.eval:
        for seed in args.seeds:
            accuracy(args.eval, seed, args.rapidocr_path, not args.no_raw, args.oracle, args.tessdata_dir)


if __name__ == "__main__":
    main()
