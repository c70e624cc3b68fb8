"""The launcher's guard against a stale torch-extensions lock (a JIT build killed half-way)."""

from __future__ import annotations

import os

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
