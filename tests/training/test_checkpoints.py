"""What a checkpoint was written under, and which resumes onto another number of ranks are refused (the
resumes themselves: test_distributed.py::test_resume_onto_another_number_of_processes, slow)."""

from __future__ import annotations

import pytest
import torch

from vlmforge.common.errors import ConfigError
from vlmforge.training.checkpoints import Written, reshard_check, written


def zero(stage: int, **extra: object) -> dict:
    return {"zero_optimization": {"stage": stage, **extra}}


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_written_reads_the_latest_tags_world_size_and_stage(tmp_path, name):
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        written(ckpt)
    (ckpt / "step0000004").mkdir(parents=True)
    (ckpt / "latest").write_text("step0000004\n")
    with pytest.raises(FileNotFoundError, match="no DeepSpeed model states"):
        written(ckpt)
    torch.save({"dp_world_size": 3, "ds_config": zero(2), "module": {}}, ckpt / "step0000004" / name)
    assert written(ckpt) == Written("step0000004", 3, 2)


def test_which_world_size_changes_reshard_and_which_are_refused():
    two = Written("step0000004", 2, 2)
    assert not reshard_check(two, 2, zero(2))  # same world size: DeepSpeed's own load
    assert reshard_check(two, 1, zero(2)) and reshard_check(two, 4, zero(2))
    assert reshard_check(Written("t", 1, 3), 2, zero(3))
    assert not reshard_check(Written("t", 2, 0), 1, zero(0))  # no ZeRO: every rank holds everything
    with pytest.raises(ConfigError, match="ZeRO stage 2, this run's train.deepspeed has stage 3"):
        reshard_check(two, 1, zero(3))
    with pytest.raises(ConfigError, match="ZeRO stage 2"):
        reshard_check(two, 2, zero(3))  # also without a world size change
    assert reshard_check(two, 1, zero(1))  # ZeRO 1 and 2 keep the same optimizer state
    with pytest.raises(ConfigError, match="NVMe-offloaded optimizer; resume on 2 rank"):
        reshard_check(two, 1, zero(2, offload_optimizer={"device": "nvme"}))


def test_the_data_hash_leaves_out_the_layout_and_still_knows_the_older_one():
    """A resume may change data.num_workers and train.micro_batch_size; checkpoints written before that
    carry the hash with them (data_hash(with_layout=True)), which a resume accepts too."""
    from vlmforge.training.config import load_train_config

    base = load_train_config("configs/train/stage1.yaml")
    other = load_train_config("configs/train/stage1.yaml", ["data.num_workers=3", "train.micro_batch_size=5"])
    assert base.data_hash() == other.data_hash()
    assert base.data_hash(with_layout=True) != other.data_hash(with_layout=True)
    assert base.data_hash(with_layout=True) != base.data_hash()
    seed = load_train_config("configs/train/stage1.yaml", ["data.seed=7"])
    assert seed.data_hash() != base.data_hash()
