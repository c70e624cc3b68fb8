"""Multi-process DeepSpeed on the CPU (gloo): ZeRO 1/2/3 agreement, text-only ranks, equal steps, resume,
resume onto another number of processes.

Every run trains the tiny fused model for STEPS steps on two shards of 48 rows, one with images and one
without, so in every step one rank's batch carries no image (the ZeRO-3 hang of DeepSpeed issue 7170).
The 1-process reference reads the same two slices with two dataloader workers and accumulates their two
micro-batches, so its steps see exactly the samples of the 2-process runs: the losses must agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from train_support import PYTHON, ROOT, clean_env, kill_at_first_checkpoint, mixed_data, recipe_data

from vlmforge.training.checkpoints import written
from vlmforge.training.config import load_train_config
from vlmforge.training.launch import free_port
from vlmforge.training.metrics import read_metrics

pytestmark = pytest.mark.slow  # multi-process DeepSpeed runs

STEPS = 12
SAVE_EVERY = 4
TIMEOUT = 150
# 2-process losses vs the 1-process reference: same samples, different reduction order (fp32).
ZERO_TOLERANCE = 1e-5


def overrides(out: Path, **extra: object) -> list[str]:
    _, tokenizer = recipe_data()
    values = {
        "task": "vlm",
        "tokenizer": tokenizer,
        "data.path": mixed_data(),
        "data.heldout_fraction": 0,
        "data.shuffle_buffer": 16,
        "data.num_workers": 1,
        "data.max_tokens": 40,
        "model.init_from": "[]",
        "train.output": out,
        "train.steps": STEPS,
        "train.micro_batch_size": 8,
        "train.grad_accum": 1,
        "train.save_every": SAVE_EVERY,
        "train.progress": "false",
        "optim.warmup_steps": 2,
        "optim.lr": 3e-3,
        **extra,
    }
    return [f"--set={k}={v}" for k, v in values.items()]


def torchrun(nproc: int, out: Path, resume: bool = False, **extra: object) -> subprocess.CompletedProcess:
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        "-m",
        "vlmforge.training.train",
        "configs/train/stage1.yaml",
        *overrides(out, **extra),
        *(["--resume"] if resume else []),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")}


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """1 process, ZeRO-2, two dataloader workers, two micro-batches per step."""
    out = tmp_path_factory.mktemp("ref")
    torchrun(
        1,
        out,
        **{"data.num_workers": 2, "train.grad_accum": 2, "train.deepspeed": "configs/deepspeed/zero2.json"},
    )
    return out


@pytest.fixture(scope="module")
def two_processes_zero2(tmp_path_factory) -> Path:
    """2 processes, ZeRO-2, uninterrupted: a ZeRO case below and the 2-process resume test's reference."""
    out = tmp_path_factory.mktemp("zero2x2")
    torchrun(2, out, **{"train.deepspeed": "configs/deepspeed/zero2.json"})
    return out


ZERO3 = {
    "train.deepspeed": "configs/deepspeed/zero3.json",
    "train.activation_checkpointing": "true",  # recomputation under ZeRO-3's gather hooks
}


@pytest.fixture(scope="module")
def two_processes_zero3(tmp_path_factory) -> Path:
    """2 processes, ZeRO-3, uninterrupted: a ZeRO case below and a checkpoint to resume on 1 process."""
    out = tmp_path_factory.mktemp("zero3x2")
    torchrun(2, out, **ZERO3)
    return out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_processes_track_one_process(stage, reference, tmp_path, request):
    if stage in (2, 3):
        tmp_path = request.getfixturevalue(f"two_processes_zero{stage}")
    else:
        torchrun(2, tmp_path, **{"train.deepspeed": "configs/deepspeed/zero1.json"})
    ref, got = losses(reference), losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert max(abs(got[s] - ref[s]) for s in ref) <= ZERO_TOLERANCE, (got, ref)
    assert ref[STEPS] < ref[1]  # and it trains
    s = summary(tmp_path)
    assert s["zero_stage"] == stage and s["world_size"] == 2
    assert s["micro_batches_per_rank"] == [STEPS, STEPS]  # equal steps on every rank
    assert s["frozen_unchanged"]  # the frozen decoder's partitions are bit-identical after training
    # One rank's batch had images and the other's none, at every step, and nothing hung.
    assert {r["images"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")} == {8}


# Processes: (the fixture of the uninterrupted run to match, the overrides that run was made with).
RESUME_CASES = {
    1: ("reference", {"data.num_workers": 2, "train.grad_accum": 2}),
    2: ("two_processes_zero2", {}),
}


@pytest.mark.parametrize("nproc", sorted(RESUME_CASES))
def test_sigkill_then_resume_matches_uninterrupted_run(nproc, request, tmp_path):
    """`vlmforge train --nproc N` (DeepSpeed launcher, ZeRO-2), SIGKILL of every rank after a checkpoint,
    `--resume`: the same losses and data as the uninterrupted N-process run."""
    fixture, extra = RESUME_CASES[nproc]
    reference = request.getfixturevalue(fixture)
    cli = [PYTHON, "-m", "vlmforge.pipeline.cli", "train", "configs/train/stage1.yaml", "--nproc", str(nproc)]
    args = overrides(tmp_path, **extra, **{"train.deepspeed": "configs/deepspeed/zero2.json"})
    flat = [x for a in args for x in ("--set", a.removeprefix("--set="))]
    env = clean_env()
    resumed_from = kill_at_first_checkpoint(cli + flat, tmp_path, env, TIMEOUT, STEPS)

    proc = subprocess.run(
        cli + flat + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl", "train")}
    got = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl", "train")}
    assert sorted(got) == list(range(1, STEPS + 1))  # the killed run's steps past its checkpoint were dropped
    for step in range(resumed_from + 1, STEPS + 1):
        assert got[step]["loss"] == ref[step]["loss"], step  # exact: CPU, fp32, same order
        assert got[step]["data"] == ref[step]["data"], step  # the same samples in the same order (rank 0)
        assert got[step]["images"] == ref[step]["images"], step  # and as many with an image on all ranks
    accum = extra.get("train.grad_accum", 1)
    assert summary(tmp_path)["micro_batches_per_rank"] == [accum * (STEPS - resumed_from)] * nproc
    # Checkpoints hold the trained parameters only; the frozen decoder comes from init_from (here: the seed).
    tag = (tmp_path / "checkpoints" / "latest").read_text().strip()
    states = torch.load(
        tmp_path / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    assert any(k.startswith("fusion.") for k in states["module"])
    assert not any(k.startswith("decoder.") for k in states["module"]), sorted(states["module"])[:5]


# Resume onto another number of processes: (the uninterrupted run whose step-8 checkpoint is resumed, the
# processes resuming it, their overrides, the uninterrupted run of as many processes to match). 2 slots of
# 8 rows either way (2 ranks x 1 reader, 1 rank x 2 readers), so the stream goes on with the same samples.
ONE = {"data.num_workers": 2, "train.grad_accum": 2}
ZERO2 = {"train.deepspeed": "configs/deepspeed/zero2.json"}
WORLD_CASES = {
    "zero2-1to2": ("reference", 2, ZERO2, "two_processes_zero2"),
    "zero3-2to1": ("two_processes_zero3", 1, {**ONE, **ZERO3}, "reference"),
}
RESUME_AT = 2 * SAVE_EVERY


@pytest.mark.parametrize("case", sorted(WORLD_CASES))
def test_resume_onto_another_number_of_processes(case, request, tmp_path, torch_one_thread):
    """`--resume` on N processes of a checkpoint written by M: ZeRO's partitions of the fp32 weights and Adam
    moments are rebuilt for N (DeepSpeed's universal checkpoint); the steps after it see the samples of the
    uninterrupted N-process run and match its losses to ZERO_TOLERANCE (the reduction order of the
    M-process part differs, as between the uninterrupted runs themselves; Adam moments started afresh at
    the resume move the next loss by 1.7e-3, DeepSpeed's ZeRO-3 step counter shared by sub-groups by
    7.8e-5). N = 1 runs in this process (training.train.run), N = 2 under torchrun."""
    made_by, nproc, extra, match = WORLD_CASES[case]
    source, reference = request.getfixturevalue(made_by), request.getfixturevalue(match)
    tag = f"step{RESUME_AT:07d}"
    shutil.copytree(source / "checkpoints" / tag, tmp_path / "checkpoints" / tag)
    (tmp_path / "checkpoints" / "latest").write_text(tag)
    shutil.copy(source / "metrics.jsonl", tmp_path / "metrics.jsonl")
    assert written(tmp_path / "checkpoints").world_size == 3 - nproc

    if nproc == 1:
        from vlmforge.training.train import run

        values = [a.removeprefix("--set=") for a in overrides(tmp_path, **extra)]
        run(load_train_config("configs/train/stage1.yaml", values), resume=True)
    else:
        torchrun(nproc, tmp_path, resume=True, **extra)
    ref = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl", "train")}
    got = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl", "train")}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(RESUME_AT + 1, STEPS + 1):
        assert got[step]["data"] == ref[step]["data"], step  # the same samples (rank 0's ids)
        assert got[step]["images"] == ref[step]["images"], step
        assert abs(got[step]["loss"] - ref[step]["loss"]) <= ZERO_TOLERANCE, (step, got[step], ref[step])
    s = summary(tmp_path)
    assert s["world_size"] == nproc and s["frozen_unchanged"]
    assert s["micro_batches_per_rank"] == [extra.get("train.grad_accum", 1) * (STEPS - RESUME_AT)] * nproc
    # The conversion is gone; the new checkpoints are ordinary ones of N processes.
    assert not (tmp_path / "checkpoints" / "universal").exists()
    assert written(tmp_path / "checkpoints").world_size == nproc
