"""The tiny recipe on a mix of sources: web pairs + charts, tables, equations (structured) + grounding.

Data: the clean rows of ``--web`` sample pairs and ``--n`` pairs of each synthetic kind (``vlmforge synth``),
written as curated shards without a curation run (tests/train_support.py; synthetic.yaml keeps over 99 % of
each kind, benchmarks/RESULTS.md), one output per source, and a 512-id BPE on all their captions. Then the
chain text_lm -> clip -> stage 1 (vlm), every stage on ``data.sources`` (web weight ``--web-weight``, each
other kind 1), images at ``--image-size`` px; then ``vlmforge eval`` of the stage-1 weights: per source the
held-out loss with the row's image and with another row's (the image gap), and for grounding the share of
boxes found (IoU >= 0.5) against the same prompts with another image and the mean box. Stages already in
OUT/results.json are not repeated.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/mix_recipe.py --out /tmp/mix-recipe
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

KINDS = ("charts", "tables", "equations", "grounding")
STRUCTURED = ("charts", "tables", "equations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--web", type=int, default=4000, help="sample pairs generated (about 61 %% clean)")
    parser.add_argument("--n", type=int, default=1000, help="pairs of each synthetic kind")
    parser.add_argument("--web-weight", type=float, default=2.0, help="the web source's weight (others 1)")
    parser.add_argument("--image-size", type=int, default=64, help="clip and stage 1 image size (px)")
    parser.add_argument("--max-tokens", type=int, default=128, help="vlm and clip tokens per sample")
    parser.add_argument("--steps", type=int, nargs=3, default=(500, 400, 1000), metavar=("LM", "CLIP", "VLM"))
    parser.add_argument("--eval-rows", type=int, default=128, help="held-out rows evaluated per source")
    parser.add_argument("--set", action="append", default=[], help="override for the stage-1 run")
    args = parser.parse_args()

    import train_support

    from vlmforge.pipeline.synth import write_synth
    from vlmforge.training.config import load_train_config
    from vlmforge.training.tokenizer import caption_texts, train_tokenizer
    from vlmforge.training.train import run
    from vlmforge.training.vlm import evaluate_weights

    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    curated, tok = root / "curated", root / "tokenizer.json"
    done = root / "results.json"
    results = json.loads(done.read_text()) if done.exists() else {}

    def save(name: str, value: dict) -> None:
        results[name] = value
        print(name, json.dumps(value), flush=True)
        done.write_text(json.dumps(results, indent=1))

    if not tok.exists():
        t0 = time.time()
        rows = {"web": train_support.clean_rows(root / "raw" / "web", args.web, seed=0)}
        for kind in KINDS:
            write_synth(kind, root / "raw" / kind, args.n, seed=0, workers=2)
            rows[kind] = train_support.tar_rows(root / "raw" / kind)
        for name, some in rows.items():
            train_support.write_curated(curated / name, [some[i : i + 500] for i in range(0, len(some), 500)])
        train_tokenizer(itertools.chain(*(caption_texts(curated / name) for name in rows)), 512, tok)
        save("data", {"rows": {k: len(v) for k, v in rows.items()}, "s": round(time.time() - t0)})

    sources = [{"path": str(curated / "web"), "weight": args.web_weight}]
    sources += [{"path": str(curated / kind), "weight": 1.0} for kind in KINDS]
    common = [
        "data.path=null",
        f"data.sources={json.dumps(sources)}",
        f"tokenizer={tok}",
        "data.heldout_fraction=0.1",
        f"eval.max_rows={args.eval_rows}",
        "eval.every=0",
    ]
    size = f"model.image_size={args.image_size}"
    lm, clip_steps, vlm_steps = args.steps

    def train(name: str, config: str, *overrides: str) -> None:
        if name in results:
            return
        t0 = time.time()
        sets = [*common, f"train.output={root / name}", "train.progress=false", "train.save_every=0"]
        sets += overrides
        s = run(load_train_config(ROOT / config, sets)).summary
        save(name, {"before": s["eval_before"], "after": s["eval_after"], "s": round(time.time() - t0)})

    tokens = f"data.max_tokens={args.max_tokens}"
    train("text_lm", "configs/train/text_lm.yaml", f"train.steps={lm}", "data.max_tokens=128")
    train("clip", "configs/train/clip.yaml", f"train.steps={clip_steps}", size, tokens)
    first = f"{root / 'text_lm/model.safetensors'},{root / 'clip/encoder.safetensors'}"
    stage1 = [f"model.init_from=[{first}]", f"train.steps={vlm_steps}", size, tokens, *args.set]
    train("stage1", "configs/train/stage1.yaml", *stage1)
    if "eval" not in results:
        t0 = time.time()
        weights = root / "stage1" / "model.safetensors"
        figures = evaluate_weights(ROOT / "configs/train/stage1.yaml", weights, [*common, *stage1])
        save("eval", {**figures, "s": round(time.time() - t0)})

    e = results["eval"]
    print("| source | loss (own image) | loss (other image) | image gap | target |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("web", *KINDS):
        target = "< 0.9" if name in STRUCTURED else ""
        print(f"| {name} | {e[f'{name}/loss']:.4f} | {e[f'{name}/loss_shuffled']:.4f} | "
              f"{e[f'{name}/image_gap']:.4f} | {target} |")  # fmt: skip
    g = "grounding/"
    if f"{g}box_iou50" in e:
        print(f"grounding: {int(e[g + 'boxes'])} boxes, IoU >= 0.5: {e[g + 'box_iou50']:.3f} with the image, "
              f"{e[g + 'box_iou50_other_image']:.3f} with another image, {e[g + 'box_iou50_mean_box']:.3f} "
              f"the mean box; mean IoU {e[g + 'box_mean_iou']:.3f}")  # fmt: skip
    print("wall s:", {k: v["s"] for k, v in results.items()})


if __name__ == "__main__":
    main()
