"""The training loop: DeepSpeed ZeRO engine, streaming curated data, warmup + cosine, eval, checkpoints.

One process per device, started by ``vlmforge train`` (the DeepSpeed launcher, or torchrun), or directly:

    torchrun --nproc_per_node 2 -m vlmforge.training.train configs/train/stage1.yaml [--resume] [--set k=v]

A run writes into ``train.output``: ``metrics.jsonl`` and ``tensorboard/`` (rank 0), ``checkpoints/``
(DeepSpeed's, with the data position inside), the consolidated safetensors weights of the task
(``model.safetensors``, for clip also ``encoder.safetensors``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlmforge.common.errors import ConfigError
from vlmforge.training import clip, text_lm, video, vlm
from vlmforge.training.activations import enable_activation_checkpointing
from vlmforge.training.checkpoints import Checkpoints, reshard_check, written
from vlmforge.training.config import TrainConfig, load_train_config
from vlmforge.training.data import StreamSpec, data_index, heldout_batches, source_indexes, train_loader
from vlmforge.training.eval import EvalBatches, combine_sources, to_device
from vlmforge.training.flops import (
    COUNTED,
    component_sizes,
    computed_counts,
    peak_flops,
    step_flops,
)
from vlmforge.training.launch import check_extension_locks, free_port, unlink_shm_buffer
from vlmforge.training.metrics import MetricsWriter
from vlmforge.training.model import hf
from vlmforge.training.model.config import ModelConfig, get_config
from vlmforge.training.optim import build_optimizer, build_scheduler, deepspeed_config, resolve_precision
from vlmforge.training.source_loss import source_means, source_sums
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.weights import gather_tensors, load_chain, save_tensors

TASKS: dict[str, ModuleType] = {"text_lm": text_lm, "clip": clip, "vlm": vlm, "video": video}


@dataclass
class RunResult:
    engine: Any  # the DeepSpeed engine; engine.module is the trained model
    summary: dict[str, Any]
    output: Path


HF_FIELDS = {"mllama": "model.hf_mllama", "decoder": "model.hf_decoder", "encoder": "model.hf_encoder"}


def hf_sources(cfg: TrainConfig) -> dict[str, str]:
    """The HF checkpoint dirs the model starts from, by kind (training/model/hf.py:load_hf_sources)."""
    dirs = {kind: getattr(cfg.model, field.removeprefix("model.")) for kind, field in HF_FIELDS.items()}
    return {kind: str(Path(d).resolve()) for kind, d in dirs.items() if d}


def _from_dir(kind: str, path: str, read: Callable[[], Any]) -> Any:
    """``read()``, its errors as a ConfigError naming the config field of the directory."""
    try:
        return read()
    except (OSError, ValueError, KeyError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{HF_FIELDS[kind]}: {path}: {message}") from None


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The preset (or the HF checkpoints' shapes), at the stage's resolution."""
    sources = hf_sources(cfg)
    if "mllama" in sources:
        tiles = (cfg.model.max_num_tiles or 1) > 1  # keep the checkpoint's tile tables
        mc = _from_dir("mllama", cfg.model.hf_mllama, lambda: hf.mllama_dir_config(sources["mllama"], tiles))
    else:
        try:
            mc = get_config(cfg.model.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        if "decoder" in sources:
            mc = _from_dir(
                "decoder",
                cfg.model.hf_decoder,
                lambda: hf.fusion_config_from_hf(mc, llama_path=sources["decoder"]),
            )
        if "encoder" in sources:
            mc = _from_dir(
                "encoder",
                cfg.model.hf_encoder,
                lambda: hf.fusion_config_from_hf(mc, vision_path=sources["encoder"]),
            )
    if cfg.model.image_size is not None:
        if cfg.model.image_size % mc.vision.patch_size:
            raise ConfigError(
                f"model.image_size: {cfg.model.image_size} is not a multiple of the patch size "
                f"{mc.vision.patch_size}"
            )
        native = mc.vision.image_size
        if cfg.model.image_size != native and ("mllama" in sources or "encoder" in sources):
            raise ConfigError(
                f"model.image_size: {cfg.model.image_size} differs from the {native} px of the checkpoint in "
                f"{HF_FIELDS['mllama' if 'mllama' in sources else 'encoder']}; leave it unset (higher "
                "resolutions: model.tile_grid)"
            )
        mc.vision = dataclasses.replace(mc.vision, image_size=cfg.model.image_size)
    if cfg.model.tile_grid is not None:
        mc.vision = dataclasses.replace(mc.vision, tile_grid=cfg.model.tile_grid)
    if cfg.model.max_num_tiles is not None:
        if "mllama" in sources and cfg.model.max_num_tiles != mc.vision.max_num_tiles:
            raise ConfigError(
                f"model.max_num_tiles: {cfg.model.max_num_tiles} differs from the {mc.vision.max_num_tiles} "
                f"tile(s) of the checkpoint in model.hf_mllama; leave it unset (single tile) or set that"
            )
        try:
            mc.vision = dataclasses.replace(mc.vision, max_num_tiles=cfg.model.max_num_tiles)
        except ValueError as e:
            raise ConfigError(f"model.max_num_tiles: {e}") from None
    if cfg.task == "video":
        mc = video.video_model_config(cfg, mc)
    return mc


def load_hf(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Load the run's HF checkpoint dirs into the freshly built model (one kind at a time, for errors)."""
    for kind, path in hf_sources(cfg).items():
        _from_dir(kind, path, lambda kind=kind, path=path: hf.load_hf_sources(model, {kind: path}))


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def zero3_partitioner(
    ds_config: dict[str, Any], dtype: torch.dtype
) -> Callable[[list[torch.nn.Parameter]], None]:
    """Turns parameters into this rank's ZeRO-3 partitions (as ``deepspeed.initialize`` would, with the
    same settings), so the model is partitioned while it is built (model/build.py) instead of after."""
    import deepspeed

    first: list[torch.nn.Parameter] = []

    def partition(params: list[torch.nn.Parameter]) -> None:
        if not params:
            return
        if not first:
            deepspeed.zero.Init(
                module=torch.nn.ParameterList(params), config_dict_or_path=ds_config, dtype=dtype
            )
            first.append(params[0])
        else:  # the same partitioning state as the first ones
            first[0].convert_to_zero_parameters(param_list=params)

    return partition


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); a process started without a launcher becomes a world of one."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    if accelerator.device_name() == "cpu":
        torch.distributed.barrier()  # every rank has mapped every rank's shared-memory buffer
        unlink_shm_buffer(torch.distributed.get_rank())
    device = torch.device(
        accelerator.device_name(local_rank) if accelerator.device_name() != "cpu" else "cpu"
    )
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks share the cores; OpenMP threads spinning against each other slow small steps many times.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (2 * local_world)))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


DIGEST_CHUNK = 1 << 26  # bytes hashed per device-to-host copy


def frozen_digest(module: torch.nn.Module) -> list[str]:
    """Per rank, a digest of the frozen parameters' bytes: under ZeRO-3 every rank hashes its own
    partitions, else rank 0 alone hashes the (replicated) tensors; the others give "". One tensor, and of
    it DIGEST_CHUNK bytes, at a time: never a CPU copy of the whole decoder, nor one on every rank."""
    rank = torch.distributed.get_rank()
    h = hashlib.blake2b(digest_size=16)
    hashed = False
    for name, p in module.named_parameters():
        if p.requires_grad:
            continue
        partitioned = hasattr(p, "ds_tensor")
        if not partitioned and rank != 0:
            continue
        flat = (p.ds_tensor if partitioned else p.data).detach().reshape(-1).view(torch.uint8)
        h.update(name.encode())
        for chunk in flat.split(DIGEST_CHUNK):
            h.update(chunk.cpu().numpy())
        hashed = True
    digests: list[str] = [""] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, h.hexdigest() if hashed else "")
    return digests


def _check_resume(state: dict[str, Any], expect: dict[str, Any]) -> None:
    for key, value in expect.items():
        if state.get(key) != value:
            raise ConfigError(
                f"--resume: the checkpoint was made with {key}={state.get(key)!r}, this run has {value!r}; "
                "resume with the same data (or start a new train.output)"
            )


def run(cfg: TrainConfig, resume: bool = False) -> RunResult:
    """Train as configured; every rank calls this. Returns the engine and the run summary."""
    cfg.require("data.path", "tokenizer", "train.output")
    check_extension_locks()  # before DeepSpeed's JIT builds, which would wait on a stale lock forever
    rank, world, device = init_distributed()
    import deepspeed

    task = TASKS[cfg.task]
    out = Path(cfg.train.output)
    precision = resolve_precision(cfg)
    seed_everything(cfg.train.seed)

    tok = TextTokenizer(cfg.tokenizer)
    ds_config = deepspeed_config(cfg, precision)
    checkpoints = Checkpoints(out, cfg.train.keep_checkpoints, rank)
    # Another number of ranks: ZeRO's partitions are rebuilt from DeepSpeed's universal form (checkpoints.py)
    reshard = resume and reshard_check(written(checkpoints.dir), world, ds_config)
    if reshard:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    mc = model_config(cfg)
    tok.check_model(
        mc.decoder.vocab_size, mc.image_token_id, mc.decoder.bos_token_id, mc.decoder.eos_token_id
    )
    if cfg.task == "vlm":
        # On meta first: the HF dirs' parts get memory in the run's dtype and their weights, nothing else
        # (before init_from: a stage 2 file holds what stage 1 trained on top of them)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        partition = zero3_partitioner(ds_config, dtype) if zero_stage(ds_config) == 3 else None
        model = vlm.build_model(cfg, mc, hf_sources(cfg), dtype, lambda m, _: load_hf(m, cfg), partition)
    else:
        model = task.build_model(cfg, mc)
        load_hf(model, cfg)  # task video: the HF dirs into the eagerly built model
    for path in cfg.model.init_from:
        load_chain(model, path, strict_names=True)
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    sizes, attention = component_sizes(model), task.attention_table(mc)

    train_index = data_index(cfg.data, "train")
    fmt = task.sample_format(cfg, mc, tok)
    eval_fmt = dataclasses.replace(fmt, synthetic_caption_prob=0.0, repeat_text=1)  # one caption each
    eval_sets: dict[str, EvalBatches] = {}
    if cfg.data.heldout_fraction > 0:  # 0: no held-out rows, no evaluation
        # On the CPU until each batch's turn; the fused model's eval is split over the ranks (eval.py).
        # A mix is evaluated source by source.
        for name, index in source_indexes(data_index(cfg.data, "heldout")).items():
            batches = heldout_batches(index, eval_fmt, cfg.eval.max_rows, cfg.eval.micro_batch_size)
            eval_sets[name] = EvalBatches(batches, device, rank, world, shard=cfg.task == "vlm")

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    spec = StreamSpec(
        cfg.data.seed, cfg.data.shuffle_buffer, cfg.train.micro_batch_size, world, cfg.data.num_workers
    )
    identity = {"data_hash": cfg.data_hash(), "fingerprint": train_index.fingerprint}
    # These may change: the rest of the epoch is then the rows not yet seen, cut among the new readers.
    layout = {
        "num_workers": cfg.data.num_workers,
        "micro_batch_size": cfg.train.micro_batch_size,
        "world_size": world,
    }
    frozen_before = frozen_digest(engine.module)
    start = 0
    if resume:
        state = checkpoints.load(engine, reshard)
        if state.get("data_hash") == cfg.data_hash(with_layout=True):  # an older checkpoint's hash
            state["data_hash"] = identity["data_hash"]
        _check_resume(state, identity)
        start = state["step"]
    accum = cfg.train.grad_accum
    position = state["data"] if resume else None
    previous = None
    if resume:
        made = {k: state.get(k, v) for k, v in layout.items()}  # checkpoints before: mb as now
        previous = dataclasses.replace(spec, **made)
    stream, loader = train_loader(
        train_index, fmt, spec, rank, start_batches=start * accum, position=position, previous=previous
    )
    metrics = MetricsWriter(out, rank == 0, resume_step=start if resume else None)
    say = tqdm.write if rank == 0 else (lambda *_: None)
    if rank == 0:
        (out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
        layout_note = (  # a packed micro-batch holds as many samples as fit, so its count per epoch varies
            f"{cfg.train.micro_batch_size} packed rows of {cfg.data.max_tokens} tokens per micro-batch"
            if cfg.data.packing
            else f"{stream.steps_per_epoch} micro-batches per rank per epoch"
        )
        say(
            f"{cfg.task}: {train_index.note}; {layout_note}, "
            f"{world} rank(s), ZeRO stage {engine.zero_optimization_stage()}, {precision}"
        )

    def client_state(step: int) -> dict[str, Any]:
        return {"step": step, "data": stream.position(step * accum), **identity, **layout}

    def evaluate(step: int) -> dict[str, float]:
        if not eval_sets:
            return {}
        engine.eval()
        result = combine_sources({name: task.evaluate(engine, b) for name, b in eval_sets.items()})
        engine.train()
        metrics.log("eval", step, result)
        say(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    before = evaluate(0) if start == 0 else None
    peak = peak_flops(precision, cfg.train.peak_tflops)
    bar = tqdm(
        total=cfg.train.steps,
        initial=start,
        desc=cfg.task,
        unit="step",
        dynamic_ncols=True,
        disable=rank != 0 or not cfg.train.progress,
    )
    batches = iter(loader)
    step, loss, saved, micro_batches = start, float("nan"), start, 0
    names = train_index.sources
    # A mix: each source's loss from the loss at each label (no second forward). clip's contrastive loss
    # couples a batch's rows and has no per-label loss, so it gets none.
    per_label = getattr(task, "output", None) if len(names) > 1 else None
    engine.train()
    for step in range(start + 1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        loss_sum, samples, tokens, images = 0.0, 0, 0, 0
        by_source = [0] * len(names)
        source_totals = torch.zeros(2, len(names), dtype=torch.float64, device=device)
        computed = dict.fromkeys(COUNTED, 0.0)  # what the model computes (padding too), for MFU
        digest = hashlib.blake2b(digest_size=8)
        for _ in range(accum):
            batch = next(batches)
            digest.update("\n".join(batch["ids"]).encode())
            batch = to_device(batch, device)
            if per_label is not None:
                output = per_label(engine, batch)
                micro_loss = output.loss
                source_totals += source_sums(output.token_loss, batch, len(names))
            else:
                micro_loss = task.loss(engine, batch)
            engine.backward(micro_loss)
            engine.step()
            loss_sum += float(micro_loss.detach())
            samples += len(batch["ids"])
            for source in batch["sources"]:
                by_source[source] += 1
            tokens += batch["num_tokens"]
            images += batch["num_images"]
            for kind, n in computed_counts(batch, mc.vision).items():
                computed[kind] += n
            micro_batches += 1
        sums = [loss_sum / accum, samples, tokens, images, *computed.values(), *by_source]
        sums += source_totals.flatten().tolist() if per_label is not None else []
        loss, samples, tokens, images, *rest = _sum_across_ranks(sums, device)
        computed, rest = dict(zip(COUNTED, rest, strict=False)), rest[len(COUNTED) :]
        by_source, totals = rest[: len(names)], rest[len(names) :]
        text = computed["text"]
        loss /= world
        elapsed = time.perf_counter() - t0
        record = {
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": samples / elapsed,
            "tokens_per_s": tokens / elapsed,  # real tokens (no padding)
            "real_token_share": tokens / text,
            "step_time_s": elapsed,
            "images": int(images),  # rows with an image, all ranks
            "data": digest.hexdigest(),  # of rank 0's sample ids
        }
        if len(names) > 1:  # a mix: samples of each source this step, all ranks, and its loss
            record |= {f"samples/{name}": int(n) for name, n in zip(names, by_source, strict=True)}
            record |= source_means(totals, names) if totals else {}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        flops = step_flops(sizes, task.TOKENS, computed, task.FIRST, attention)
        if peak is not None:
            record["mfu"] = flops / elapsed / (peak * world)
        metrics.log("train", step, record)
        bar.update(1)
        postfix = {
            "loss": f"{loss:.4f}",
            "samples/s": f"{record['samples_per_s']:.1f}",
            "tok/s": f"{record['tokens_per_s']:.0f}",
        }
        if "mfu" in record:
            postfix["mfu"] = f"{record['mfu']:.1%}"
        if len(names) > 1:
            postfix["mix"] = "/".join(str(int(n)) for n in by_source)
            postfix |= {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")}
        bar.set_postfix(postfix, refresh=False)
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
            evaluate(step)
        if cfg.train.save_every and step % cfg.train.save_every == 0:
            checkpoints.save(engine, step, client_state(step))
            saved = step
    bar.close()
    after = evaluate(step)
    if saved != step:
        checkpoints.save(engine, step, client_state(step))
    frozen_after = frozen_digest(engine.module)
    per_rank: list[int] = [0] * world
    torch.distributed.all_gather_object(per_rank, micro_batches)
    files = {}
    for name, keep in task.exports(engine.module).items():
        tensors = gather_tensors(engine.module, keep)
        if rank == 0:
            save_tensors(tensors, out / name, mc, cfg.model.init_from, hf_sources(cfg))
        files[name] = str(out / name)
    summary = {
        "task": cfg.task,
        "steps": step,
        "world_size": world,
        "zero_stage": engine.zero_optimization_stage(),
        "precision": precision,
        "micro_batches_per_rank": per_rank,  # in this process's part of the run (since a resume)
        "frozen_unchanged": frozen_before == frozen_after,
        "final_train_loss": loss,
        "eval_before": before,
        "eval_after": after,
        "data": train_index.note,
        "files": files,
    }
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics.close()
    torch.distributed.barrier()
    return RunResult(engine, summary, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vlmforge.training.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="train config YAML, e.g. configs/train/stage1.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.set)
        run(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"vlmforge train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
