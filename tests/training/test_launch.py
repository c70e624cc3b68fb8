"""The launcher's guard against a stale torch-extensions lock (a JIT build killed half-way), and CPU ranks'
shared memory released."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from vlmforge.pipeline.cli import main as vlmforge_main
from vlmforge.training.launch import check_extension_locks, stale_extension_locks


def fake_lock(root, *parts):
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.write_bytes(b"")  # what torch's FileBaton leaves: an empty file
    return lock


def test_a_lock_nobody_holds_is_stale_and_a_held_one_is_not(tmp_path):
    assert stale_extension_locks(tmp_path) == []
    stale = fake_lock(tmp_path, "py311_cpu", "deepspeed_shm_comm")  # default root: python_accel/op/lock
    held = fake_lock(tmp_path, "cpu_adam")  # TORCH_EXTENSIONS_DIR: op/lock
    fd = os.open(held, os.O_RDONLY)  # a build in progress keeps its lock open
    try:
        assert stale_extension_locks(tmp_path) == [stale]
        with pytest.raises(Exception, match="rm " + str(stale)):
            check_extension_locks(tmp_path)
    finally:
        os.close(fd)
    assert sorted(stale_extension_locks(tmp_path)) == sorted([stale, held])


def test_vlmforge_train_refuses_with_the_path_instead_of_hanging(tmp_path, monkeypatch, capsys):
    lock = fake_lock(tmp_path, "py311_cpu", "deepspeed_shm_comm")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "py311_cpu"))
    rc = vlmforge_main(["train", str(ROOT / "configs/train/stage1.yaml"), "--launcher", "torchrun"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "stale torch-extensions build lock" in err and f"rm {lock}" in err
    assert "launching" not in err  # refused before any process started


SHM_RANK = """
import os, sys
from pathlib import Path
import torch
from vlmforge.training.train import init_distributed
rank, world, _ = init_distributed()
import deepspeed.comm as dist
dist.barrier()  # both ranks past init_distributed
port = os.environ["MASTER_PORT"]
names = sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
t = torch.full((4,), float(rank + 1))
dist.inference_all_reduce(t)  # through the shared-memory buffers whose names are gone
print("RESULT", rank, names, t.tolist(), flush=True)
"""


@pytest.mark.slow  # two processes and DeepSpeed's CPU comm op (JIT-built on first use)
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_cpu_ranks_leave_no_shared_memory_buffers_behind():
    from train_support import clean_env

    from vlmforge.training.launch import free_port

    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHM_RANK],
            env=clean_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    results = [line.split(" ", 2) for out in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2, outs[0][-3000:]
    for _, _, rest in results:
        assert rest == "[] [3.0, 3.0, 3.0, 3.0]", rest  # no names left, and the all-reduce still adds up
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
