"""Stage 2 on Mllama's aspect-ratio tiles against stage 1 and the other stage-2 variants, on the same rows.

The tiny recipe's chain (text_lm -> clip -> stage 1, each with its configured steps) on the clean rows of
``--n`` sample pairs (tests/train_support.py: no curation run; ``clip_score`` is a stand-in hash of the id,
so stage 2's "top 50 %" subset is a random half here, unlike `make demo-train`'s alignment scores), then
from the same stage-1 file: ``configs/train/stage2_tiles.yaml`` (4 tiles of 32 px), the same with
``model.max_num_tiles=1`` (stage 1's single 32 px image: more steps on the subset, no tiles) and
``configs/train/stage2.yaml`` (32 px thumbnail plus 2 x 2 tiles). Held-out loss with the row's image and
with another row's, and their ratio (the image gap), on the same held-out rows for every run. Runs already
in OUT/results.json are not repeated; ``--variants`` picks the stage-2 runs (default: all three).

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/stage2_tiles.py --out /tmp/stage2-tiles --n 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

VARIANTS = {
    "stage2_tiles": ("configs/train/stage2_tiles.yaml", []),
    "stage2_single_tile": ("configs/train/stage2_tiles.yaml", ["model.max_num_tiles=1"]),
    "stage2_grid": ("configs/train/stage2.yaml", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20000, help="sample pairs generated (about 61 %% clean)")
    parser.add_argument("--set", action="append", default=[], help="override for every stage-2 run")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="stage-2 variants to train (default: all)")  # fmt: skip
    args = parser.parse_args()

    import train_support

    from vlmforge.training.config import load_train_config
    from vlmforge.training.tokenizer import caption_texts, train_tokenizer
    from vlmforge.training.train import run

    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    curated, tok = root / "curated", root / "tokenizer.json"
    if not tok.exists():
        rows = train_support.clean_rows(root / "raw", args.n, seed=0)
        train_support.write_curated(curated, [rows[i : i + 1000] for i in range(0, len(rows), 1000)])
        train_tokenizer(caption_texts(curated), 512, tok)
        print(f"data: {len(rows)} clean rows", flush=True)
    done = root / "results.json"
    results = json.loads(done.read_text()) if done.exists() else {}

    def train(name: str, config: str, *overrides: str) -> None:
        if name in results:
            return
        t0 = time.time()
        sets = [f"data.path={curated}", f"tokenizer={tok}", f"train.output={root / name}"]
        sets += ["train.progress=false", "train.save_every=0", *overrides]
        s = run(load_train_config(ROOT / config, sets)).summary
        results[name] = {"before": s["eval_before"], "after": s["eval_after"], "s": round(time.time() - t0)}
        print(name, json.dumps(results[name]), flush=True)
        done.write_text(json.dumps(results, indent=1))

    train("text_lm", "configs/train/text_lm.yaml")
    train("clip", "configs/train/clip.yaml")
    first = f"{root / 'text_lm/model.safetensors'},{root / 'clip/encoder.safetensors'}"
    train("stage1", "configs/train/stage1.yaml", f"model.init_from=[{first}]")
    init = f"model.init_from=[{root / 'stage1/model.safetensors'}]"
    for name in args.variants:
        config, overrides = VARIANTS[name]
        train(name, config, init, *overrides, *args.set)

    print("| run | start loss | end loss | shuffled image | image gap | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("stage1", *args.variants):
        b, a = results[name]["before"], results[name]["after"]
        print(f"| {name} | {b['loss']:.4f} | {a['loss']:.4f} | {a['loss_shuffled']:.4f} | "
              f"{a['image_gap']:.4f} | {results[name]['s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
