"""DeepSpeed checkpoints of a run, and resuming them on another number of ranks.

ZeRO partitions the trainable parameters' fp32 master weights and Adam moments per rank, so a checkpoint
written by M ranks cannot be loaded as such by N. On such a resume, rank 0 first converts the checkpoint
into DeepSpeed's universal form (``deepspeed.checkpoint.ds_to_universal``: one file per parameter and
state, whole tensors) under ``checkpoints/universal/``, and every rank loads its new partition from it
(``checkpoint.load_universal`` in the DeepSpeed config). The conversion is deleted once loaded; the run's
next checkpoints are ordinary ones of the new world size.
"""

from __future__ import annotations

import argparse
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmforge.common.errors import ConfigError
from vlmforge.common.files import atomic_path

UNIVERSAL = "universal"


@dataclass(frozen=True)
class Written:
    """What the latest checkpoint was written under."""

    tag: str
    world_size: int  # data-parallel ranks
    zero_stage: int


def latest_tag(ckpt_dir: Path) -> str:
    latest = ckpt_dir / "latest"
    if not latest.exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    return latest.read_text().strip()


def written(ckpt_dir: Path) -> Written:
    """World size and ZeRO stage of the latest checkpoint, from its rank-0 model states (memory-mapped:
    the trainable weights in that file are not read)."""
    tag = latest_tag(ckpt_dir)
    files = sorted((ckpt_dir / tag).glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"--resume: {ckpt_dir / tag} holds no DeepSpeed model states")
    state = torch.load(files[0], map_location="cpu", mmap=True, weights_only=False)
    zero = (state.get("ds_config") or {}).get("zero_optimization") or {}
    return Written(tag, int(state["dp_world_size"]), int(zero.get("stage", 0)))


def reshard_check(before: Written, world: int, ds_config: dict[str, Any]) -> bool:
    """Must the checkpoint be re-partitioned for `world` ranks? Raises where it cannot be resumed so."""
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    family = {0: 0, 1: 1, 2: 1, 3: 3}  # ZeRO 1 and 2 write the same optimizer state
    if family.get(before.zero_stage) != family.get(stage):
        raise ConfigError(
            f"--resume: the checkpoint was written under ZeRO stage {before.zero_stage}, this run's "
            f"train.deepspeed has stage {stage}; resume with a config of stage {before.zero_stage}"
        )
    if before.world_size == world or stage == 0:  # without ZeRO every rank holds the whole state
        return False
    zero = ds_config.get("zero_optimization") or {}
    if (zero.get("offload_optimizer") or {}).get("device") == "nvme":
        raise ConfigError(
            f"--resume: the checkpoint was written by {before.world_size} rank(s), this run has {world}, "
            "and DeepSpeed cannot re-partition an NVMe-offloaded optimizer; resume on "
            f"{before.world_size} rank(s)"
        )
    return True


def to_universal(ckpt_dir: Path, tag: str) -> Path:
    """Convert checkpoint `tag` to DeepSpeed's universal form under ckpt_dir/universal (rank 0 only)."""
    from deepspeed.checkpoint import ds_to_universal

    root = ckpt_dir / UNIVERSAL
    shutil.rmtree(root, ignore_errors=True)  # a conversion cut short before
    args = argparse.Namespace(
        input_folder=str(ckpt_dir / tag),
        output_folder=str(root / tag),
        num_extract_workers=1,  # no process pool inside a training rank
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # the version tag Megatron-style clients write; we have no TP patterns
    )
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # its progress lines and bars
        ds_to_universal.main(args)
    return root


def repair_zero3_universal_load(optimizer: torch.optim.Optimizer, universal: Path) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load in the base `optimizer`: every param group
    gets the first group's hyperparameters (lr, weight_decay), but the no-decay and gate groups differ
    (optim.param_groups); and every sub-group's Adam state shares one `step` tensor, which AdamW then
    increments once per sub-group and step (a wrong bias correction from the second step on)."""
    saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        here = len(optimizer.param_groups)
        raise ValueError(
            f"--resume: the checkpoint has {len(groups)} optimizer param groups, this run has {here}"
        )
    for group, kept in zip(optimizer.param_groups, groups, strict=True):
        group.update((k, v) for k, v in kept.items() if k != "params")
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


class Checkpoints:
    """DeepSpeed checkpoints under OUTPUT/checkpoints, with the run's own state in client_state."""

    def __init__(self, out: Path, keep: int, rank: int) -> None:
        self.dir, self.keep, self.rank = out / "checkpoints", keep, rank

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> None:
        tag = f"step{step:07d}"
        # `latest` only after every rank's shards are written: DeepSpeed 0.19.8 lets rank 0 write it before
        # the other ranks finish, so a kill in between would leave a resumable-looking, half-written tag.
        # Without the frozen parameters (the decoder, 8B of 11B at full scale): they come back from the
        # run's init_from files (or its seed) on resume, as at the start.
        engine.save_checkpoint(
            str(self.dir),
            tag=tag,
            client_state={"vlmforge": state},
            save_latest=False,
            exclude_frozen_parameters=True,
        )
        torch.distributed.barrier()
        if self.rank == 0:
            with atomic_path(self.dir / "latest") as tmp:
                tmp.write_text(tag)
            tags = sorted(p for p in self.dir.glob("step*") if p.is_dir())
            for old in tags[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, engine: Any, reshard: bool = False) -> dict[str, Any]:
        """The latest checkpoint into `engine`; `reshard`: written by another number of ranks (the engine
        was built with ``checkpoint.load_universal``)."""
        tag = latest_tag(self.dir)
        load_dir = self.dir
        if reshard:
            if self.rank == 0:
                to_universal(self.dir, tag)
            torch.distributed.barrier()
            load_dir = self.dir / UNIVERSAL
        # Not strict: the checkpoint holds the trainable parameters only (save above).
        path, client = engine.load_checkpoint(str(load_dir), load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"--resume: could not load the latest checkpoint in {self.dir}")
        if reshard:
            if engine.zero_optimization_stage() == 3:
                repair_zero3_universal_load(engine.optimizer.optimizer, load_dir / tag)
            torch.distributed.barrier()
            if self.rank == 0:
                shutil.rmtree(load_dir, ignore_errors=True)
        return client["vlmforge"]
