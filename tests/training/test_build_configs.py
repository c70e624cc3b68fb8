"""The tuned DeepSpeed configs for real runs (configs/deepspeed/*_real.json): DeepSpeed takes them as the
trainer fills them in, and the example full-size configs use them (the small test configs stay as they
are)."""

from __future__ import annotations

import json

import pytest
from train_support import ROOT

from vlmforge.training.config import load_train_config
from vlmforge.training.optim import deepspeed_config


@pytest.mark.parametrize("name", ["zero2_real", "zero3_real"])
def test_real_run_configs_parse_in_deepspeed_with_communication_overlapped(name, monkeypatch):
    from deepspeed.runtime.config import DeepSpeedConfig

    from vlmforge.training.train import init_distributed

    monkeypatch.chdir(ROOT)
    init_distributed()  # DeepSpeedConfig reads the world size
    cfg = load_train_config(
        ROOT / "configs/train/stage1.yaml", [f"train.deepspeed=configs/deepspeed/{name}.json"]
    )
    parsed = DeepSpeedConfig(deepspeed_config(cfg, "bf16"))
    zero = parsed.zero_config
    assert parsed.bfloat16_config.enabled and zero.overlap_comm and zero.contiguous_gradients
    assert zero.stage == int(name[4])
    if zero.stage == 3:
        test = json.loads((ROOT / "configs/deepspeed/zero3.json").read_text())["zero_optimization"]
        assert test["stage3_param_persistence_threshold"] == 0 < zero.param_persistence_threshold


@pytest.mark.parametrize("example", ["llama31_8b_clip_l14", "llama32_11b_vision"])
def test_full_size_examples_use_the_tuned_zero3(example):
    cfg = load_train_config(ROOT / f"configs/train/{example}.yaml")
    assert cfg.train.deepspeed == "configs/deepspeed/zero3_real.json"
