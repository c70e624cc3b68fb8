"""MFU of a `benchmarks/real_llama_gpu.py` run recounted under this checkout's FLOP count, on the CPU.

The training stream is deterministic, so the run's batches are rebuilt here from the same curated data,
tokenizer and settings (only config.json files of the 8B-shaped decoder and CLIP tower are written; the
model is built on the meta device for its parameter counts). Each step's recorded real-token count must
equal the rebuilt batch's, then the step's FLOPs are counted twice: the current ``training/flops.py``
count and the parameters-only count (no attention, frozen encoder at 4N), each over the recorded step time.

    python benchmarks/mfu_recount.py --metrics DIR --curated DIR --tokenizer FILE   # DIR: metrics-*.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
from real_llama_gpu import CLIP, CONFIG, LLAMA, text_only_tokenizer  # this script's folder is on sys.path
from safetensors.torch import save_file

from vlmforge.training import vlm
from vlmforge.training.config import load_train_config
from vlmforge.training.data import StreamSpec, data_index, train_loader
from vlmforge.training.flops import component_sizes, computed_counts, step_flops
from vlmforge.training.model.config import TrainableConfig
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.train import model_config

RUNS = {"unpacked": (128, False), "packed": (32, True)}  # real_llama_gpu.py's micro-batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metrics", type=Path, required=True, help="the run's $OUT (metrics-NAME.jsonl)")
    p.add_argument("--curated", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/mfu-recount"))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    p.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the medians")
    args = p.parse_args()
    for name, config in (("llama", LLAMA), ("clip", CLIP)):  # shapes only: no weights are read
        (args.work / name).mkdir(parents=True, exist_ok=True)
        (args.work / name / "config.json").write_text(json.dumps(config))
        save_file({"unused": torch.zeros(1)}, str(args.work / name / "model.safetensors"))
    tokenizer = text_only_tokenizer(args.tokenizer, args.work / "tokenizer.json")
    for run, (micro, packing) in RUNS.items():
        file = args.metrics / f"metrics-{run}.jsonl"
        if not file.exists():
            continue
        sets = {"model.hf_decoder": args.work / "llama", "model.hf_encoder": args.work / "clip",
                "tokenizer": tokenizer, "data.path": args.curated.resolve(), "data.heldout_fraction": 0.0,
                "data.num_workers": 2, "data.max_tokens": 256, "train.micro_batch_size": micro,
                "data.packing": str(packing).lower()}  # fmt: skip
        cfg = load_train_config(CONFIG, [f"{k}={v}" for k, v in sets.items()])
        mc = model_config(cfg)
        mc = dataclasses.replace(mc, trainable=TrainableConfig(**cfg.model.trainable.model_dump()))
        with torch.device("meta"):
            sizes = component_sizes(FusionModel(mc))
        fmt = vlm.sample_format(cfg, mc, TextTokenizer(tokenizer))
        spec = StreamSpec(cfg.data.seed, cfg.data.shuffle_buffer, micro, 1, cfg.data.num_workers)
        _, loader = train_loader(data_index(cfg.data, "train"), fmt, spec, 0)
        batches = iter(loader)
        now, before = [], []
        for record in map(json.loads, file.read_text().splitlines()):
            batch = next(batches)
            recorded = round(record["tokens_per_s"] * record["step_time_s"])
            if batch["num_tokens"] != recorded:
                step = record["step"]
                raise SystemExit(f"{run} step {step}: {batch['num_tokens']} tokens, the run had {recorded}")
            counts = computed_counts(batch, mc.vision)
            tokens_only = {"text": counts["text"], "image": counts["image"]}
            peak = args.peak_tflops * 1e12 * record["step_time_s"]
            now.append(step_flops(sizes, vlm.TOKENS, counts, vlm.FIRST, vlm.attention_table(mc)) / peak)
            before.append(step_flops(sizes, vlm.TOKENS, tokens_only) / peak)
        mfu, parameters_only = (round(statistics.median(x[args.skip :]), 4) for x in (now, before))
        print(json.dumps({"run": run, "steps": len(now), "mfu": mfu, "mfu_parameters_only": parameters_only}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
