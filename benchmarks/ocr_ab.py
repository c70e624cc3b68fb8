"""The OCR stage of a git revision against the working tree's, in one process, on the demo's own survivors.

    OMP_THREAD_LIMIT=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/ocr_ab.py \
        --output /tmp/vlmforge-bench-peers/stages-100000 --every 20 --rev a60ad94 --passes 3

Images: every `--every`-th row of a curated output's data shards (what the OCR phase read in that run; e.g.
`benchmarks/peers.py --only stages --stages-size 100000` leaves one). The revision's OCR modules
(`REV_MODULES`, from `git show REV:path`, written to a temporary directory) are imported under other names
beside the working tree's, and the two stages read the same rows in alternating passes: CPU ms per image
(best pass; also apart for images without and with detected text), tesseract runs, images given text, and on
how many rows the OCR text is the same. A speed change that keeps the text gives the same text on every row.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from vlmforge.pipeline.config import OcrConfig  # noqa: E402
from vlmforge.pipeline.enrich import ocr as tree_ocr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the OCR stage's own modules, in import order (a module may import the ones before it)
REV_MODULES = ("blob_label", "text_detect", "line_clean", "colour_key", "ocr")


def revision_ocr(rev: str, where: Path) -> types.ModuleType:
    """The `ocr` module of `rev`, its enrich imports bound to `rev`'s modules (those it has), written to
    `where` as files (numba caches its kernels beside their source) and imported as rev_<name>."""
    names = []
    for name in REV_MODULES:
        found = subprocess.run(["git", "show", f"{rev}:pipeline/enrich/{name}.py"], capture_output=True,
                               text=True, cwd=REPO)
        if found.returncode:
            continue  # not in that revision
        source = found.stdout
        for earlier in names:
            source = source.replace(f"from vlmforge.pipeline.enrich.{earlier} import",
                                    f"from rev_{earlier} import")
        (where / f"rev_{name}.py").write_text(source)
        names.append(name)
    sys.path.insert(0, str(where))
    return importlib.import_module("rev_ocr")


def sample_images(output: Path, every: int) -> list[bytes]:
    """Every `every`-th row's image bytes of a curated output's data shards (sorted by path)."""
    images: list[bytes] = []
    for shard in sorted((output / "data").rglob("*.parquet")):
        images += pq.read_table(shard, columns=["image"]).column("image").to_pylist()
    return [image for image in images[::every] if image is not None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="a curated output directory (its data/ shards)")
    p.add_argument("--every", type=int, default=20, help="every N-th row is read")
    p.add_argument("--rev", default="HEAD", help="the git revision compared with the working tree")
    p.add_argument("--passes", type=int, default=3, help="alternating passes; the best of each is reported")
    args = p.parse_args()
    images = sample_images(args.output, args.every)
    with tempfile.TemporaryDirectory(prefix="ocr_ab-") as where:
        stages = {args.rev: revision_ocr(args.rev, Path(where)), "working tree": tree_ocr}
        report(images, stages, args)


def report(images: list[bytes], stages: dict[str, types.ModuleType], args: argparse.Namespace) -> None:
    """The alternating passes and their table."""
    seconds: dict[str, list[float]] = {name: [] for name in stages}
    split = {name: {True: [], False: []} for name in stages}  # detected text or not -> seconds per pass
    texts: dict[str, list[str | None]] = {}
    counters: dict[str, dict] = {}
    for _ in range(args.passes):
        for name, module in stages.items():
            stage = module.OcrText(OcrConfig())
            stage.read(images[0])  # the engine and kernels loaded before the clock starts
            stage.counters.clear()
            by_kind = {True: 0.0, False: 0.0}
            texts[name] = []
            for image in images:
                detected, start = stage.counters["detected"], time.process_time()
                texts[name].append(stage.read(image))
                by_kind[stage.counters["detected"] > detected] += time.process_time() - start
            seconds[name].append(sum(by_kind.values()))
            for kind, spent in by_kind.items():
                split[name][kind].append(spent)
            counters[name] = dict(stage.counters)
    print(f"{len(images)} images (every {args.every}th row of {args.output})")
    print("| stage | ms/image, best | passes | tesseract runs | detected | given text | ms per image without"
          " / with detected text, best |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in stages:
        c, each = counters[name], [f"{1000 * s / len(images):.3f}" for s in seconds[name]]
        detected = c.get("detected", 0)
        without = 1000 * min(split[name][False]) / max(1, len(images) - detected)
        with_text = 1000 * min(split[name][True]) / max(1, detected)
        print(f"| {name} | {1000 * min(seconds[name]) / len(images):.3f} | {', '.join(each)} | "
              f"{c.get('ocr_run', 0)} | {detected} | {c.get('with_text', 0)} | "
              f"{without:.2f} / {with_text:.2f} |")
    same = sum(a == b for a, b in zip(*texts.values(), strict=True))
    print(f"same OCR text on {same} of {len(images)} images")


if __name__ == "__main__":
    main()
