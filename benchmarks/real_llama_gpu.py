"""A short real run of the Llama 3.1 8B + CLIP ViT-L/14 stage-1 config on random weights (GPU).

Writes a random Llama-3.1-8B-shaped decoder directory (config.json as the hub's, bf16 safetensors in shards
with an index) and a random CLIP ViT-L/14 vision tower directory, then trains
``configs/train/llama31_8b_clip_l14.yaml`` from them through ``python -m vlmforge.training.train`` (the
`vlmforge train` entry point), once with unpacked and once with packed batches (``data.packing``), and
reports per run: the median step time, real tokens/s, samples/s and MFU over the steps after warm-up, the
time to the first step (the build with weights streamed from the shards), the peak GPU memory, and the
size of the checkpoint (trained parts only). Nothing is downloaded: the weights are random; the captions
and images are a curated output given with ``--curated`` and its BPE with ``--tokenizer`` (a 512-id BPE
holds ids the 128k vocabulary has, so BOS/EOS are written as 0/1 in the random decoder's config).

    python benchmarks/real_llama_gpu.py --curated DIR --tokenizer FILE --out OUT          # GPU
    python benchmarks/real_llama_gpu.py --curated DIR --tokenizer FILE --out OUT --tiny   # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from build_memory import CLIP_L14, LLAMA31_8B  # this script's folder is on sys.path
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/train/llama31_8b_clip_l14.yaml"

# the hub's config.json values (build_memory.py), as transformers writes them; BOS/EOS: the module docstring
LLAMA = {**LLAMA31_8B, "architectures": ["LlamaForCausalLM"], "head_dim": 128, "hidden_act": "silu",
         "attention_bias": False, "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 1,
         "torch_dtype": "bfloat16"}  # fmt: skip
CLIP = {**CLIP_L14, "architectures": ["CLIPVisionModel"], "num_channels": 3, "torch_dtype": "bfloat16"}
TINY_LLAMA = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 8,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
TINY_CLIP = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 8, "num_attention_heads": 4,
             "image_size": 32, "patch_size": 8}  # fmt: skip


def llama_tensors(c: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a LlamaForCausalLM checkpoint."""
    d, hd, f = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (f, d)
        yield p + "mlp.up_proj.weight", (f, d)
        yield p + "mlp.down_proj.weight", (d, f)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (c["vocab_size"], d)


def clip_tensors(c: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a CLIPVisionModel checkpoint."""
    d, f = c["hidden_size"], c["intermediate_size"]
    positions = (c["image_size"] // c["patch_size"]) ** 2 + 1
    v = "vision_model."
    yield v + "embeddings.class_embedding", (d,)
    yield v + "embeddings.patch_embedding.weight", (d, c["num_channels"], c["patch_size"], c["patch_size"])
    yield v + "embeddings.position_embedding.weight", (positions, d)
    yield v + "pre_layrnorm.weight", (d,)
    yield v + "pre_layrnorm.bias", (d,)
    for i in range(c["num_hidden_layers"]):
        p = f"{v}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", (d, d)
            yield p + f"self_attn.{proj}.bias", (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            yield p + f"{norm}.weight", (d,)
            yield p + f"{norm}.bias", (d,)
        yield p + "mlp.fc1.weight", (f, d)
        yield p + "mlp.fc1.bias", (f,)
        yield p + "mlp.fc2.weight", (d, f)
        yield p + "mlp.fc2.bias", (d,)
    yield v + "post_layernorm.weight", (d,)
    yield v + "post_layernorm.bias", (d,)


def write_checkpoint(
    path: Path, config: dict, tensors: Iterator[tuple[str, tuple[int, ...]]], shard_bytes: int, device: str
) -> float:
    """A random bf16 checkpoint dir as transformers writes one (shards + index); returns its GB."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    g = torch.Generator(device=device).manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, shape in tensors:
        if name.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight", "layer_norm2.weight")):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, generator=g, device=device) * 0.02).to(torch.bfloat16).cpu()
        n = t.numel() * 2
        if size and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
        total += n
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total / 1e9


class Watcher(threading.Thread):
    """While a run lasts, every 0.5 s: GPU 0's `memory.used` (nvidia-smi; peak kept) and when the run's
    metrics.jsonl got its first and last lines (seconds since the start)."""

    def __init__(self, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.metrics, self.t0 = metrics, time.perf_counter()
        self.peak_mib = 0
        self.first_line_s: float | None = None
        self.last_line_s: float | None = None
        self.stop = threading.Event()
        self._size = 0

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        gpu = torch.cuda.is_available()
        while not self.stop.wait(0.5):
            now = time.perf_counter() - self.t0
            size = self.metrics.stat().st_size if self.metrics.exists() else 0
            if size > self._size:
                self.first_line_s = self.first_line_s or now
                self.last_line_s, self._size = now, size
            if gpu:
                try:
                    used = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split()
                    self.peak_mib = max(self.peak_mib, int(used[0]))
                except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                    gpu = False


def dir_gb(path: Path) -> float | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e9


def train(name: str, sets: dict[str, object], runs: Path, out: Path, warmup: int) -> dict:
    """One `vlmforge train` run of the example config with ``sets``; its figures. The run's metrics and
    log go to ``out``; its checkpoint and weights stay in ``runs`` and are deleted after measuring."""
    run_dir = runs / name
    args = [sys.executable, "-m", "vlmforge.training.train", str(CONFIG)]
    for key, value in {**sets, "train.output": run_dir}.items():
        args += ["--set", f"{key}={value}"]
    watch = Watcher(run_dir / "metrics.jsonl")
    watch.start()
    with open(out / f"train-{name}.log", "w") as log:
        rc = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - watch.t0
    watch.stop.set()
    result: dict = {"run": name, "rc": rc, "wall_s": round(wall, 1)}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        shutil.copy(metrics, out / f"metrics-{name}.jsonl")
    steps = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in steps if r.get("kind") == "train"]
    if rc != 0 or not steps:
        return result
    timed = steps[warmup:] or steps

    def median(key: str) -> float | None:
        values = [r[key] for r in timed if key in r]
        return round(statistics.median(values), 4) if values else None

    first, last = watch.first_line_s, watch.last_line_s
    result |= {
        "steps": len(steps),
        "timed_steps": len(timed),
        "step_time_s": median("step_time_s"),
        "tokens_per_s": median("tokens_per_s"),
        "samples_per_s": median("samples_per_s"),
        "real_token_share": median("real_token_share"),
        "mfu": median("mfu"),
        # the build (weights streamed from the shards) and DeepSpeed's setup: until the first step began
        "before_first_step_s": round(first - steps[0]["step_time_s"], 1) if first else None,
        "after_last_step_s": round(wall - last, 1) if last else None,  # final checkpoint and export
        "loss_first_last": [round(steps[0]["loss"], 4), round(steps[-1]["loss"], 4)],
        "peak_gpu_mib": watch.peak_mib or None,
        "checkpoint_gb": round(dir_gb(run_dir / "checkpoints"), 3),
        "exported_gb": round(dir_gb(run_dir / "model.safetensors"), 3),
    }
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        result |= {k: s.get(k) for k in ("frozen_unchanged", "zero_stage", "precision", "world_size")}
    return result


def text_only_tokenizer(src: Path, dst: Path) -> Path:
    """``src`` without its ``<|image|>`` token, as Llama 3.1's tokenizer.json is (the model adds the id)."""
    tok = json.loads(src.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|image|>"]
    dst.write_text(json.dumps(tok))
    return dst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curated", type=Path, required=True, help="a curated output dir (data/*.parquet)")
    p.add_argument("--tokenizer", type=Path, required=True, help="its tokenizer.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/real-llama"), help="where the random dirs go")
    p.add_argument("--runs-dir", type=Path, help="the runs' outputs (checkpoints); default: WORK/runs")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU check of this script")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the medians")
    p.add_argument("--micro-batch", type=int, default=128)
    p.add_argument("--packed-micro-batch", type=int, default=32, help="rows of --max-tokens when packed")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--runs", default="unpacked,packed", help="comma-separated: unpacked, packed, zero2")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    llama, clip = dict(LLAMA), dict(CLIP)
    if args.tiny:
        llama |= TINY_LLAMA
        clip |= TINY_CLIP
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "tiny": args.tiny}
    t0 = time.perf_counter()
    llama_dir, clip_dir = args.work / "llama", args.work / "clip"
    results["llama_gb"] = write_checkpoint(llama_dir, llama, llama_tensors(llama), 5 * 10**9, device)
    results["clip_gb"] = write_checkpoint(clip_dir, clip, clip_tensors(clip), 10**9, device)
    results["write_dirs_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results), flush=True)
    base = {
        "model.hf_decoder": llama_dir,
        "model.hf_encoder": clip_dir,
        "tokenizer": text_only_tokenizer(args.tokenizer, args.work / "tokenizer.json"),
        "data.path": args.curated.resolve(),
        "data.heldout_fraction": 0.0,  # no evaluation: the timing is of training steps
        "data.num_workers": 2,
        "data.max_tokens": args.max_tokens,
        "train.steps": args.steps,
        "train.micro_batch_size": args.micro_batch,
        "train.grad_accum": 1,
        "train.save_every": 0,  # one checkpoint at the end: its size is reported
        "train.progress": "false",
        "optim.warmup_steps": min(5, args.steps),
    }
    variants = {
        "unpacked": {},
        "packed": {"data.packing": "true", "train.micro_batch_size": args.packed_micro_batch},
        "zero2": {"train.deepspeed": "configs/deepspeed/zero2.json"},
    }
    results["runs"] = []
    runs = args.runs_dir or args.work / "runs"
    (args.out / "real_llama.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    for name in args.runs.split(","):
        run = train(name, {**base, **variants[name]}, runs, args.out, args.warmup)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        shutil.rmtree(runs / name, ignore_errors=True)  # one run's optimizer state at a time
        (args.out / "real_llama.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if all(r["rc"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
