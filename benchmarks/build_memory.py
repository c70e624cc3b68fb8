"""Peak resident memory of one rank while building the full-size fused models (nothing downloaded).

Each case runs in a fresh process and reports its peak RSS (``ru_maxrss``) after the imports and after the
build, and the parameter count:

- ``meta_8b``: the shape of configs/train/llama31_8b_clip_l14.yaml (Llama 3.1 8B decoder, CLIP ViT-L/14,
  the llama32_11b preset's adapters) built on the meta device, as ``vlmforge train`` builds it before any
  weights load (training/model/build.py). The shapes come from config.json files with Llama-3.1-8B's and
  clip-vit-large-patch14's values, through the run config (random init, no weights).
- ``meta_11b``: the llama32_11b preset on the meta device.
- ``fresh_8b`` (``--fresh``, needs about 10 GB): as ``meta_8b``, then the trainable parts that start from
  scratch (adapters, projection head: about 1.9B parameters) initialised and kept in bf16, the decoder and
  encoder given (unwritten) bf16 memory for the weights that would stream in next.
- ``load_1b`` and ``zero3_1b`` (``--load``, writes a 2.5 GB random checkpoint in a temporary dir): a
  Llama-3.2-1B-shaped decoder dir (bf16, 2 shards) loaded as ``model.hf_decoder`` (tiny preset adapters, fp32
  build) in one process without ZeRO-3, and on 2 ranks under ZeRO-3 (partitioned while it loads); peak RSS
  per rank after the build.

    python benchmarks/build_memory.py            # meta_8b and meta_11b
    python benchmarks/build_memory.py --fresh    # and fresh_8b
    python benchmarks/build_memory.py --load     # and load_1b, zero3_1b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# config.json values of meta-llama/Llama-3.1-8B and openai/clip-vit-large-patch14 (vision part)
LLAMA31_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
CLIP_L14 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shape_dir(root: Path, name: str, config: dict) -> Path:
    """A checkpoint dir with the config.json and a placeholder weights file (the build reads no weights)."""
    import torch
    from safetensors.torch import save_file

    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({"placeholder": torch.zeros(1)}, str(path / "model.safetensors"))
    return path


LLAMA32_1B = {
    **LLAMA31_8B,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": True,
}


def write_llama_dir(path: Path, config: dict) -> None:
    """A random bf16 Llama checkpoint dir in 2 shards, with the index file HF writes."""
    import torch
    from safetensors.torch import save_file

    from vlmforge.training.model.build import build_meta
    from vlmforge.training.model.config import ModelConfig
    from vlmforge.training.model.hf import llama_config

    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    decoder = build_meta(ModelConfig(decoder=llama_config(config))).decoder
    names = [n for n, _ in decoder.named_parameters()]
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        tensors = {
            "model." + n: torch.randn(decoder.get_parameter(n).shape, generator=g, dtype=torch.bfloat16)
            * 0.02
            for n in shard
        }
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def load_case(case: str, llama_dir: str) -> dict:
    """Build the tiny-preset model with ``llama_dir`` as its decoder, partitioned under ZeRO-3 or not."""
    import torch

    from vlmforge.training import vlm
    from vlmforge.training.config import load_train_config
    from vlmforge.training.optim import deepspeed_config
    from vlmforge.training.train import hf_sources, init_distributed, model_config, zero3_partitioner

    after_imports = peak_mb()
    rank, world, _ = init_distributed()
    stage = 3 if case == "zero3_1b" else 2
    cfg = load_train_config(
        ROOT / "configs/train/stage1.yaml",
        [
            f"model.hf_decoder={llama_dir}",
            "model.init_from=[]",
            f"train.deepspeed={ROOT}/configs/deepspeed/zero{stage}.json",
        ],
    )
    mc = model_config(cfg)
    partition = zero3_partitioner(deepspeed_config(cfg, "fp32"), torch.float32) if stage == 3 else None
    model = vlm.build_model(cfg, mc, hf_sources(cfg), torch.float32, partition=partition)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return {
        "case": case,
        "rank": rank,
        "world": world,
        "params_billion": round(params / 1e9, 3),
        "fp32_full_copy_gb": round(params * 4 / 2**30, 1),
        "peak_rss_after_imports_mb": round(after_imports),
        "peak_rss_mb": round(peak_mb()),
    }


def run_case(case: str) -> dict:
    import torch

    from vlmforge.training import vlm
    from vlmforge.training.config import load_train_config
    from vlmforge.training.model.build import build_meta
    from vlmforge.training.model.config import get_config
    from vlmforge.training.train import hf_sources, model_config

    after_imports = peak_mb()
    if case == "meta_11b":
        model = build_meta(get_config("llama32_11b"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sets = [
                f"model.hf_decoder={shape_dir(Path(tmp), 'llama', LLAMA31_8B)}",
                f"model.hf_encoder={shape_dir(Path(tmp), 'clip', CLIP_L14)}",
                f"tokenizer={tmp}/tokenizer.json",
            ]
            cfg = load_train_config(ROOT / "configs/train/llama31_8b_clip_l14.yaml", sets)
            mc = model_config(cfg)
            if case == "meta_8b":
                model = build_meta(mc)
            else:  # fresh parts initialised; the loader is left out (no weights here)
                model = vlm.build_model(cfg, mc, hf_sources(cfg), torch.bfloat16, lambda m, s: None)
    params = sum(p.numel() for p in model.parameters())
    return {
        "case": case,
        "params_billion": round(params / 1e9, 3),
        "fp32_full_copy_gb": round(params * 4 / 2**30, 1),
        "peak_rss_after_imports_mb": round(after_imports),
        "peak_rss_mb": round(peak_mb()),
        "materialised_params_billion": round(
            sum(p.numel() for p in model.parameters() if not p.is_meta) / 1e9, 3
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fresh", action="store_true", help="also fresh_8b (needs about 10 GB)")
    p.add_argument("--load", action="store_true", help="also load_1b and zero3_1b (2.5 GB of temp files)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(load_case(args.case, args.dir) if args.dir else run_case(args.case)))
        return 0
    cases = ["meta_8b", "meta_11b"] + (["fresh_8b"] if args.fresh else [])
    for case in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True
        ).stdout
        print(out.strip().splitlines()[-1])
    if args.load:
        from vlmforge.training.launch import free_port

        env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
        with tempfile.TemporaryDirectory() as tmp:
            write_llama_dir(Path(tmp) / "llama", LLAMA32_1B)
            for case, nproc in (("load_1b", 1), ("zero3_1b", 2)):
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
                cmd += ["--master_port", str(free_port()), __file__, "--case", case, "--dir", f"{tmp}/llama"]
                out = subprocess.run(
                    cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT
                ).stdout
                for line in out.strip().splitlines():
                    if line.startswith("{"):
                        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
