"""Step time of the training loop under DeepSpeed ZeRO-2 vs a plain PyTorch loop, same model and data.

Both loops train the same fused model (frozen decoder; encoder, projection head and adapters train) from
the same initial weights with AdamW, gradient clipping and the warmup + cosine schedule, on the same
pre-built batches (fixed random captions and images, so data loading is not part of the timing). Single
steps alternate between the two loops so that load from other processes hits both alike; the figures are
median step times. On a GPU it also reports tokens/s and MFU of the DeepSpeed loop (bf16).

With ``--packing`` it compares instead real (non-padding) tokens/s of packed and unpacked micro-batches
(data.packing) in one plain PyTorch loop (the stage-1 recipe's trainable parts, AdamW), on curated sample
pairs read by the training stream: unpacked rows are padded to the longest in their micro-batch, packed
rows hold as many samples as fit in ``--max-tokens`` (on the GPU when there is one, fp32). The packed
micro-batch is the largest number of rows whose activation memory (the bytes autograd saves for the
backward pass) stays within the unpacked micro-batch's, so both use the same micro-batch memory. A third
loop, ``unpacked_max_tokens``, runs the same unpacked micro-batches right-padded to ``--max-tokens`` (every
row one sample padded to ``data.max_tokens``: the layout issue 24 was filed against); the packed
micro-batch uses less memory than it, so that ratio does not favour packing.

    python benchmarks/train_step.py                      # tiny preset, CPU
    python benchmarks/train_step.py --preset tiny --batch 64 --seq 48 --steps 100
    python benchmarks/train_step.py --packing --max-tokens 256 --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.training import vlm  # noqa: E402
from vlmforge.training.config import load_train_config  # noqa: E402
from vlmforge.training.flops import component_sizes, computed_counts, peak_flops, step_flops  # noqa: E402
from vlmforge.training.optim import build_optimizer, build_scheduler, deepspeed_config, resolve_precision  # noqa: E402
from vlmforge.training.train import init_distributed, model_config  # noqa: E402


def make_batches(cfg_model, n: int, batch: int, seq: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    vocab, size = cfg_model.decoder.vocab_size, cfg_model.vision.image_size
    out = []
    for _ in range(n):
        ids = torch.randint(2, vocab, (batch, seq), generator=g)
        ids[:, 0], ids[:, 1] = 0, cfg_model.image_token_id
        labels = ids.clone()
        labels[:, :2] = -100
        images = torch.randn(batch, 3, size, size, generator=g)
        out.append({"input_ids": ids.to(device), "labels": labels.to(device), "images": images.to(device)})
    return out


def saved_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one micro-batch (its activations)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = vlm.loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """An unpacked micro-batch right-padded to ``length`` positions (padding ignored by the loss)."""
    from vlmforge.training.model.config import IGNORE_INDEX

    extra = length - batch["input_ids"].shape[1]
    ids = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id)
    labels = torch.nn.functional.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)
    return {**batch, "input_ids": ids, "labels": labels}


def packing_main(args: argparse.Namespace) -> int:
    """Real tokens/s, packed vs unpacked micro-batches at the same micro-batch memory."""
    import dataclasses

    import numpy as np

    from vlmforge.training.data import StreamSpec, build_index, train_loader
    from vlmforge.training.eval import to_device
    from vlmforge.training.tokenizer import TextTokenizer

    torch.set_num_threads(args.threads)
    curated, tokenizer = args.curated, args.tokenizer
    if curated is None or tokenizer is None:  # the training tests' curated sample pairs
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from train_support import recipe_data

        curated, tokenizer = recipe_data()
    cfg = load_train_config(
        "configs/train/stage1.yaml",
        [
            f"model.preset={args.preset}",
            f"model.image_size={args.image_size}",
            "model.init_from=[]",
            f"data.path={curated}",
            f"tokenizer={tokenizer}",
            f"data.max_tokens={args.max_tokens}",
            "data.num_workers=0",
        ],
    )
    mc = model_config(cfg)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = vlm.build_model(cfg, mc).to(device)
    index = build_index(curated, "train", cfg.data.heldout_fraction)
    fmt = vlm.sample_format(cfg, mc, TextTokenizer(tokenizer))

    def batches(packing: bool, micro_batch: int, n: int) -> list[dict]:
        spec = StreamSpec(cfg.data.seed, cfg.data.shuffle_buffer, micro_batch, 1, 0)
        _, loader = train_loader(index, dataclasses.replace(fmt, packing=packing), spec, rank=0)
        it = iter(loader)
        return [to_device(next(it), device) for _ in range(n)]

    unpacked = batches(False, args.batch, args.distinct)
    budget = max(saved_bytes(model, b) for b in unpacked)
    rows = 1
    while rows < 64 and max(saved_bytes(model, b) for b in batches(True, rows + 1, 3)) <= budget:
        rows += 1
    packed = batches(True, rows, args.distinct)
    padded = [pad_to(b, args.max_tokens, fmt.eos_id) for b in unpacked]
    loops = {}
    for name in ("unpacked", "unpacked_max_tokens", "packed"):
        m = copy.deepcopy(model)
        opt = build_optimizer(m, cfg)
        loops[name] = (m, opt)

    def step(name: str, batch: dict) -> float:
        m, opt = loops[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        vlm.loss(m, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    data = {"unpacked": unpacked, "unpacked_max_tokens": padded, "packed": packed}
    for name in data:  # warm-up
        step(name, data[name][0])
    seconds = {name: 0.0 for name in data}
    tokens = {name: 0 for name in data}
    samples = {name: 0 for name in data}
    for i in range(args.steps):  # alternate single steps, so both see the same machine load
        for name in data:
            batch = data[name][i % len(data[name])]
            seconds[name] += step(name, batch)
            tokens[name] += batch["num_tokens"]
            samples[name] += len(batch["ids"])

    def shape(name: str) -> dict:
        bs = data[name]
        return {
            "rows": bs[0]["input_ids"].shape[0],
            "mean_positions": round(float(np.mean([b["input_ids"].numel() for b in bs])), 1),
            "mean_samples": round(float(np.mean([len(b["ids"]) for b in bs])), 1),
            "real_token_share": round(
                sum(b["num_tokens"] for b in bs) / sum(b["input_ids"].numel() for b in bs), 3
            ),
            "max_saved_mb": round(max(saved_bytes(model, b) for b in bs) / 2**20, 2),
            "real_tokens_per_s": round(tokens[name] / seconds[name], 1),
            "samples_per_s": round(samples[name] / seconds[name], 1),
        }

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} thread(s)",
        "preset": args.preset,
        "image_size": args.image_size,
        "max_tokens": args.max_tokens,
        "timed_steps_each": args.steps,
        **{name: shape(name) for name in data},
    }
    result["real_tokens_per_s_ratio"] = round(
        result["packed"]["real_tokens_per_s"] / result["unpacked"]["real_tokens_per_s"], 3
    )
    result["real_tokens_per_s_ratio_vs_max_tokens"] = round(
        result["packed"]["real_tokens_per_s"] / result["unpacked_max_tokens"]["real_tokens_per_s"], 3
    )
    print(json.dumps(result, indent=2))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--steps", type=int, default=60, help="timed steps per loop (alternating)")
    p.add_argument("--deepspeed", default="configs/deepspeed/zero2.json")
    p.add_argument("--packing", action="store_true", help="packed vs unpacked real tokens/s instead")
    p.add_argument("--max-tokens", type=int, default=256, help="--packing: data.max_tokens")
    p.add_argument("--distinct", type=int, default=6, help="--packing: distinct micro-batches per mode")
    p.add_argument("--threads", type=int, default=2, help="--packing: torch threads")
    p.add_argument("--curated", type=Path, help="--packing: curated dir (default: the tests' sample pairs)")
    p.add_argument("--tokenizer", type=Path, help="--packing: its tokenizer.json")
    args = p.parse_args()
    if args.packing:
        return packing_main(args)

    cfg = load_train_config(
        "configs/train/stage1.yaml",
        [
            f"model.preset={args.preset}",
            f"model.image_size={args.image_size}",
            "model.init_from=[]",
            f"train.micro_batch_size={args.batch}",
            f"train.deepspeed={args.deepspeed}",
            f"train.steps={args.steps + 3}",
            "optim.warmup_steps=5",
        ],
    )
    _, _, device = init_distributed()
    import deepspeed

    precision = resolve_precision(cfg)
    mc = model_config(cfg)
    torch.manual_seed(0)
    plain = vlm.build_model(cfg, mc).to(device)
    ds_model = copy.deepcopy(plain)
    batches = make_batches(mc, 8, args.batch, args.seq, device)

    opt = build_optimizer(plain, cfg)
    sched = build_scheduler(opt, cfg)
    trainable = [q for q in plain.parameters() if q.requires_grad]

    def plain_step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = vlm.loss(plain, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()

    ds_opt = build_optimizer(ds_model, cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=ds_model,
        optimizer=ds_opt,
        lr_scheduler=build_scheduler(ds_opt, cfg),
        config=deepspeed_config(cfg, precision),
    )

    def ds_step(batch: dict) -> None:
        loss = vlm.loss(engine, batch)
        engine.backward(loss)
        engine.step()

    def timed(step, batch: dict) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for batch in batches[:3]:  # warm-up
        timed(plain_step, batch), timed(ds_step, batch)
    times: dict[str, list[float]] = {"plain": [], "deepspeed": []}
    for i in range(args.steps):  # alternate single steps, so both loops see the same machine load
        batch = batches[i % len(batches)]
        times["plain"].append(timed(plain_step, batch))
        times["deepspeed"].append(timed(ds_step, batch))
    plain_s, ds_s = statistics.median(times["plain"]), statistics.median(times["deepspeed"])
    tokens = args.batch * args.seq
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} thread(s)",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch": args.batch,
        "seq": args.seq,
        "zero_stage": engine.zero_optimization_stage(),
        "precision": precision,
        "plain_step_s": round(plain_s, 5),
        "deepspeed_step_s": round(ds_s, 5),
        "overhead": round(ds_s / plain_s - 1, 4),
        "tokens_per_s_deepspeed": round(tokens / ds_s, 1),
    }
    peak = peak_flops(precision)
    if peak is not None:
        counts = computed_counts({**batches[0], "computed_images": args.batch}, mc.vision)  # all alike
        sizes = component_sizes(engine.module)
        flops = step_flops(sizes, vlm.TOKENS, counts, vlm.FIRST, vlm.attention_table(mc))
        result["mfu_deepspeed"] = round(flops / ds_s / peak, 4)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
