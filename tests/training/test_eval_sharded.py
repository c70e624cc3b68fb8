"""How the held-out batches split over the ranks (training/eval.py:EvalBatches). That the ranks' sums give
the single-process evaluation is checked on 2 CPU ranks under ZeRO-3 with 3 batches in
tests/training/test_hf_training.py (test_llama_clip_dirs_train_under_zero3)."""

from __future__ import annotations

import torch

from vlmforge.training.eval import EvalBatches

CPU = torch.device("cpu")


def ids(batches) -> list[int]:
    return [int(b["x"]) for b in batches]


def test_each_rank_keeps_every_world_th_batch_and_runs_as_many_forwards():
    batches = [{"x": torch.tensor(i), "ids": [str(i)]} for i in range(3)]
    first, second = (EvalBatches(batches, CPU, rank, 2, shard=True) for rank in (0, 1))
    assert ids(first) == [0, 2] and ids(second) == [1]
    assert [(int(b["x"]), counted) for b, counted in first.padded()] == [(0, True), (2, True)]
    # the second rank repeats a batch without counting it: ZeRO-3 needs the same forwards on every rank
    assert [(int(b["x"]), counted) for b, counted in second.padded()] == [(1, True), (0, False)]


def test_unsharded_every_rank_has_every_batch_and_nothing_is_summed():
    batches = [{"x": torch.tensor(i)} for i in range(3)]
    every = EvalBatches(batches, CPU, 1, 2)
    assert ids(every) == [0, 1, 2] and all(counted for _, counted in every.padded())
    assert every.total([1.5, 3.0]) == [1.5, 3.0]
    assert not EvalBatches([], CPU)  # no held-out rows: no evaluation
