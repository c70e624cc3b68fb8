"""The tiny recipe on a mix of sources: web pairs + charts, tables, equations (structured) + grounding.

Data: the clean rows of ``--web`` sample pairs and ``--n`` pairs of each synthetic kind (``vlmforge synth``),
written as curated shards without a curation run (tests/train_support.py; synthetic.yaml keeps over 99 % of
each kind, benchmarks/RESULTS.md), one output per source, and a 512-id BPE on all their captions. Then the
chain text_lm -> clip -> stage 1 (vlm), every stage on ``data.sources`` (web weight ``--web-weight``, each
other kind 1), images at ``--image-size`` px; then ``vlmforge eval`` of the stage-1 weights: per source the
held-out loss with the row's image and with another row's (the image gap), and for grounding the share of
boxes found (IoU >= 0.5) against the same prompts with another image and the mean box. ``--stage2-steps``
adds a stage at the same resolution that also trains the encoder, from the stage-1 weights, and its eval.
Stages already in OUT/results.json are not repeated; it is rewritten after every stage.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/mix_recipe.py --out /tmp/mix-recipe

Split across machines (benchmarks/gpu_mix.sh): ``--data-only`` writes OUT/curated and OUT/tokenizer.json
(needs the pipeline: synth, sample data); ``--reuse-data DIR`` trains from such a DIR and imports only
vlmforge.training. ``--store-size`` stores every image resized as the loader resizes it (to fit a copy).
``--data-workers`` processes write the data (the pipeline's curation dependencies are not needed, so it also
runs on the GPU box: gpu_mix.sh GENERATE); ``--web-chunks`` splits the web pairs into that many seeds' runs.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("charts", "tables", "equations", "grounding")
STRUCTURED = ("charts", "tables", "equations")
SOURCES = ("web", *KINDS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--web", type=int, default=4000, help="sample pairs generated (about 61 %% clean)")
    parser.add_argument("--n", type=int, default=1000, help="pairs of each synthetic kind")
    parser.add_argument("--web-weight", type=float, default=2.0, help="the web source's weight (others 1)")
    parser.add_argument("--image-size", type=int, default=64, help="clip and stage 1 image size (px)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per sample in every stage")
    parser.add_argument("--steps", type=int, nargs=3, default=(500, 400, 1000), metavar=("LM", "CLIP", "VLM"))
    parser.add_argument("--stage2-steps", type=int, default=0, help="steps of a stage training the encoder")
    parser.add_argument("--batch", type=int, nargs=4, metavar=("LM", "CLIP", "VLM", "STAGE2"),
                        help="micro-batch sizes (default: the configs')")  # fmt: skip
    parser.add_argument("--preset", default="tiny", help="model preset (training/model/config.py)")
    parser.add_argument("--workers", type=int, help="data.num_workers of image stages")
    parser.add_argument("--eval-rows", type=int, default=128, help="held-out rows evaluated per source")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when there is one")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show each stage's progress bar")
    parser.add_argument("--store-size", type=int, help="store images resized to N x N px (data generation)")
    parser.add_argument("--store-fast", action="store_true", help="with --store-size: fast PNG, more bytes")
    parser.add_argument("--data-workers", type=int, default=2, help="processes writing the data")
    parser.add_argument("--web-chunks", type=int, default=1, help="web pairs written as N seeds' runs")
    parser.add_argument("--data-only", action="store_true", help="only write OUT/curated, tokenizer")
    parser.add_argument("--reuse-data", type=Path, help="train from DIR/curated and DIR/tokenizer.json")
    parser.add_argument("--set-all", action="append", default=[], help="override for every run")
    parser.add_argument("--set-lm", action="append", default=[], help="override for the text_lm run")
    parser.add_argument("--set-clip", action="append", default=[], help="override for the clip run")
    parser.add_argument("--set", action="append", default=[], help="override for the stage-1 run")
    parser.add_argument("--set-stage2", action="append", default=[], help="override for the stage-2 run")
    args = parser.parse_args(argv)
    if args.data_only and args.reuse_data:
        parser.error("--data-only writes the data that --reuse-data reads; give one of them")
    for name in ("store_size", "data_workers", "web_chunks"):
        if (value := getattr(args, name)) is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.reuse_data is not None:
        missing = [p for p in data_paths(args.reuse_data).values() if not p.exists()]
        missing += [p for name in SOURCES if not (p := args.reuse_data / "curated" / name / "data").is_dir()]
        if missing:
            parser.error(f"--reuse-data {args.reuse_data}: missing {', '.join(map(str, missing))}")
    return args


def data_paths(root: Path) -> dict[str, Path]:
    return {"curated": root / "curated", "tokenizer": root / "tokenizer.json"}


def resized(row: dict, size: int, fast: bool = False) -> dict:
    """`row` with its image resized to size x size (training/data.py load_image's resize), stored as the
    smaller of PNG and JPEG (quality 90): the loader then decodes what the model sees, from fewer bytes.
    `fast`: PNG at compress level 1 instead of optimized (about 3 ms an image instead of 34 on web scenes;
    the same pixels, more bytes), for data written where it is used."""
    from PIL import Image

    with Image.open(io.BytesIO(row["image"])) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    encoded = {}
    png = {"compress_level": 1} if fast else {"optimize": True}
    for fmt, options in (("PNG", png), ("JPEG", {"quality": 90})):
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        encoded[fmt] = buf.getvalue()
    fmt = min(encoded, key=lambda f: len(encoded[f]))
    return {**row, "image": encoded[fmt], "image_format": fmt, "width": size, "height": size}


def web_chunks(root: Path, n: int, chunks: int) -> list[tuple[Path, int, int]]:
    """(raw dir, pairs, seed) of each web chunk: `n` pairs in `chunks` independent runs of the sample-data
    generator (seeds 0, 1, ...), so they can be written in parallel; one chunk is the single seed-0 run."""
    size = max(1, -(-n // chunks))
    starts = range(0, n, size)
    return [(root / "raw" / "web" / f"{j:02d}", min(size, n - start), j) for j, start in enumerate(starts)]


def support():
    """tests/train_support.py (curated shards without a curation run); only data generation needs it."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import train_support

    return train_support


def store_shard(tar: str, out_dir: str, part: int, keep: list[str] | None, prefix: str, size: int | None,
                fast: bool) -> int:
    """One raw shard's rows (those in `keep`, all if None) as curated part `part` of `out_dir`, ids prefixed
    with `prefix`, images resized to `size` if given; returns the rows written (a worker process's job)."""
    wanted = None if keep is None else set(keep)
    rows = support().shard_rows(Path(tar), lambda key: wanted is None or key in wanted)
    rows = [{**r, "id": prefix + r["id"]} for r in rows]
    if size:
        rows = [resized(row, size, fast) for row in rows]
    support().write_part(Path(out_dir), part, rows)
    return len(rows)


def write_data(root: Path, args: argparse.Namespace) -> dict:
    """The curated sources and the tokenizer under `root`; {"rows": per source, "mib": size on disk}.

    `--data-workers` processes write the synthetic shards, the web chunks and the curated parts; the data
    depends on `--web-chunks`, not on the number of processes."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from vlmforge.pipeline.sample_data import write_sample_data
    from vlmforge.pipeline.sample_data.reading import read_ground_truth
    from vlmforge.pipeline.synth import write_synth
    from vlmforge.training.tokenizer import caption_texts, train_tokenizer

    paths = data_paths(root)
    # spawn: a forked copy of a process that imported torch is not safe to run (as pipeline/synth/shards.py)
    with ProcessPoolExecutor(args.data_workers, mp_context=get_context("spawn")) as pool:
        chunks = web_chunks(root, args.web, args.web_chunks)
        for done in [pool.submit(write_sample_data, *chunk) for chunk in chunks]:
            done.result()
        for kind in KINDS:
            write_synth(kind, root / "raw" / kind, args.n, seed=0, workers=args.data_workers)
        jobs = {name: [] for name in SOURCES}  # source -> store_shard arguments of each part
        for j, (raw, _, _) in enumerate(chunks):
            clean = [key for key, row in read_ground_truth(raw).items() if row["kind"] == "clean"]
            # chunk 0 keeps the single run's ids; the others' would repeat them
            jobs["web"] += [(tar, clean, f"{j:02d}-" if j else "") for tar in sorted(raw.glob("*.tar"))]
        for kind in KINDS:
            jobs[kind] = [(tar, None, "") for tar in sorted((root / "raw" / kind).glob("*.tar"))]
        futures = {
            name: [pool.submit(store_shard, str(tar), str(paths["curated"] / name), i, keep, prefix,
                               args.store_size, args.store_fast)
                   for i, (tar, keep, prefix) in enumerate(some)]
            for name, some in jobs.items()
        }  # fmt: skip
        rows = {name: sum(f.result() for f in some) for name, some in futures.items()}
    for name, count in rows.items():
        support().write_manifest(paths["curated"] / name, count)
    texts = itertools.chain(*(caption_texts(paths["curated"] / name) for name in rows))
    train_tokenizer(texts, 512, paths["tokenizer"])
    size = sum(f.stat().st_size for p in paths.values() for f in [p, *p.rglob("*")] if f.is_file())
    return {"rows": rows, "mib": round(size / 2**20, 1)}


def pick_device(choice: str) -> str:
    """Set up the environment for `choice` before torch starts; the device training and eval will use."""
    if choice == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["DS_ACCELERATOR"] = "cpu"
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU (torch.cuda.is_available() is False)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print("device:", torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch", torch.__version__)
    return device


def stage_overrides(args: argparse.Namespace, data: dict[str, Path], root: Path) -> dict[str, list[str]]:
    """Each stage's `key=value` overrides, in chain order (text_lm, clip, stage1, stage2)."""
    curated = data["curated"]
    sources = [{"path": str(curated / "web"), "weight": args.web_weight}]
    sources += [{"path": str(curated / kind), "weight": 1.0} for kind in KINDS]
    common = [
        "data.path=null",
        f"data.sources={json.dumps(sources)}",
        f"tokenizer={data['tokenizer']}",
        "data.heldout_fraction=0.1",
        f"eval.max_rows={args.eval_rows}",
        "eval.every=0",
        f"model.preset={args.preset}",
        f"data.max_tokens={args.max_tokens}",
        *args.set_all,
    ]
    images = [f"model.image_size={args.image_size}"]
    if args.workers is not None:
        images.append(f"data.num_workers={args.workers}")
    batch = args.batch or (None,) * 4
    sizes = [[f"train.micro_batch_size={b}"] if b else [] for b in batch]
    first = f"{root / 'text_lm/model.safetensors'},{root / 'clip/encoder.safetensors'}"
    stages = {
        "text_lm": [*common, f"train.steps={args.steps[0]}", *sizes[0], *args.set_lm],
        "clip": [*common, *images, f"train.steps={args.steps[1]}", *sizes[1], *args.set_clip],
        "stage1": [*common, *images, f"model.init_from=[{first}]", f"train.steps={args.steps[2]}", *sizes[2],
                   *args.set],
    }  # fmt: skip
    if args.stage2_steps:
        stages["stage2"] = [
            *common,
            *images,
            f"model.init_from=[{root / 'stage1/model.safetensors'}]",
            "model.trainable.encoder=true",
            f"train.steps={args.stage2_steps}",
            *sizes[3],
            *args.set_stage2,
        ]
    return stages


EVALS = {"stage1": "eval", "stage2": "eval_stage2"}  # results.json keys
CONFIGS = {
    "text_lm": "configs/train/text_lm.yaml",
    "clip": "configs/train/clip.yaml",
    "stage1": "configs/train/stage1.yaml",
    "stage2": "configs/train/stage1.yaml",
}


def print_eval(name: str, e: dict) -> None:
    print(f"{name}:")
    print("| source | loss (own image) | loss (other image) | image gap | target |")
    print("| --- | --- | --- | --- | --- |")
    for source in SOURCES:
        target = "< 0.9" if source in STRUCTURED else ""
        print(f"| {source} | {e[f'{source}/loss']:.4f} | {e[f'{source}/loss_shuffled']:.4f} | "
              f"{e[f'{source}/image_gap']:.4f} | {target} |")  # fmt: skip
    g = "grounding/"
    if f"{g}box_iou50" in e:
        print(f"grounding: {int(e[g + 'boxes'])} boxes, IoU >= 0.5: {e[g + 'box_iou50']:.3f} with the image, "
              f"{e[g + 'box_iou50_other_image']:.3f} with another image, {e[g + 'box_iou50_mean_box']:.3f} "
              f"the mean box; mean IoU {e[g + 'box_mean_iou']:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    done = root / "results.json"
    results = json.loads(done.read_text()) if done.exists() else {}
    start = time.time()

    def save(name: str, value: dict) -> None:
        results[name] = value
        print(f"[{time.time() - start:.0f} s] {name}", json.dumps(value), flush=True)
        done.write_text(json.dumps(results, indent=1))

    data = data_paths(args.reuse_data or root)
    if args.reuse_data is None and not data["tokenizer"].exists():
        t0 = time.time()
        save("data", {**write_data(root, args), "s": round(time.time() - t0)})
    if args.data_only:
        return

    device = pick_device(args.device)
    from vlmforge.training.config import load_train_config
    from vlmforge.training.train import run
    from vlmforge.training.vlm import evaluate_weights

    stages = stage_overrides(args, data, root)
    for name, overrides in stages.items():
        if name in results:
            continue
        print(f"[{time.time() - start:.0f} s] {name}: {args.preset} on {device}", flush=True)
        t0 = time.time()
        sets = [*overrides, f"train.output={root / name}", f"train.progress={str(args.progress).lower()}"]
        sets.append("train.save_every=0")
        s = run(load_train_config(ROOT / CONFIGS[name], sets)).summary
        save(name, {"before": s["eval_before"], "after": s["eval_after"], "s": round(time.time() - t0)})
        if name in EVALS and EVALS[name] not in results:
            t0 = time.time()
            weights = root / name / "model.safetensors"
            try:
                figures = evaluate_weights(ROOT / CONFIGS[name], weights, overrides, device)
            except Exception as e:  # an eval that fails on the device must not cost the run its figures
                if device == "cpu":
                    raise
                print(f"eval on {device} failed ({e!r}); evaluating on the CPU instead", flush=True)
                figures = evaluate_weights(ROOT / CONFIGS[name], weights, overrides, "cpu")
            save(EVALS[name], {**figures, "s": round(time.time() - t0)})

    for name in EVALS.values():
        if name in results:
            print_eval(name, results[name])
    print("wall s:", {k: v["s"] for k, v in results.items()})


if __name__ == "__main__":
    main()
