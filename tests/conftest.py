"""Session fixtures: one local Ray, one sample dataset, one curated output, one trained tiny recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

from vlmforge.pipeline.align.torchvision_cpu import declare_torchvision_ops
from vlmforge.pipeline.config import load_config
from vlmforge.pipeline.engine.executor import start_ray
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.sample_data import write_sample_data
from vlmforge.pipeline.sample_data.reading import read_ground_truth

declare_torchvision_ops()  # transformers (the HF comparison tests) imports torchvision when it is installed

SAMPLE_N = 2000


# Fixtures that train a model or curate a second output: every test using one is in the slow tier.
SLOW_FIXTURES = {"recipe", "clip_run", "compare_report"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny matmuls on a shared 2-core box run far faster single-threaded (no OpenMP spin contention)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray started once; stopped at the end only if this fixture started it."""
    import ray

    started = start_ray(None, 2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sample")
    write_sample_data(d, n=SAMPLE_N, seed=0)
    return d


@pytest.fixture(scope="session")
def ground_truth(sample_dir) -> dict[str, dict]:
    return read_ground_truth(sample_dir)


def curate(input_path: Path, output: Path, *overrides: str) -> dict:
    """Run the default recipe on `input_path` (Ray must be up)."""
    cfg = load_config(
        ROOT / "configs/curate/default.yaml",
        [f"input.path={input_path}", f"output.path={output}", *overrides],
    )
    return run_curation(cfg, progress=False, log=lambda _: None)


@pytest.fixture(scope="session")
def curated(sample_dir, ray_local, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("curated")
    # Phase 2 and finalize on Ray workers, as for inputs over ray.in_process_rows (this sample is under it)
    return out, curate(sample_dir, out, "ray.in_process_rows=0")


# The tiny training recipe, shortened from configs/train so the chain text_lm -> clip -> stage 1 -> stage 2
# runs in about a minute (DeepSpeed ZeRO-2, one rank, CPU, in this process); the demo runs it at full length.
TEXT_STEPS, CLIP_STEPS, STAGE1_STEPS, STAGE2_STEPS = 150, 30, 300, 30


def train(config: str, out: Path, *overrides: str):
    """Train `config` on the recipe data (tests/train_support.py); returns the RunResult."""
    from train_support import recipe_data

    from vlmforge.training.config import load_train_config
    from vlmforge.training.train import run

    curated, tokenizer = recipe_data()
    cfg = load_train_config(
        config,
        [
            f"data.path={curated}",
            f"tokenizer={tokenizer}",
            f"train.output={out}",
            "train.progress=false",
            "train.save_every=0",
            "eval.every=0",
            *overrides,
        ],
    )
    return run(cfg)


@pytest.fixture(scope="session")
def recipe(tmp_path_factory) -> dict:
    """RunResults of the tiny recipe, by task: text_lm, clip, stage1, stage2."""
    import torch

    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("recipe")
    try:
        text = train("configs/train/text_lm.yaml", root / "text_lm", f"train.steps={TEXT_STEPS}")
        clip = train(
            "configs/train/clip.yaml",
            root / "clip",
            f"train.steps={CLIP_STEPS}",
            "train.micro_batch_size=32",
            "optim.warmup_steps=5",
        )
        init1 = f"model.init_from=[{root / 'text_lm/model.safetensors'},{root / 'clip/encoder.safetensors'}]"
        stage1 = train("configs/train/stage1.yaml", root / "stage1", f"train.steps={STAGE1_STEPS}", init1)
        init2 = f"model.init_from=[{root / 'stage1/model.safetensors'}]"  # text_lm and clip come with it
        stage2 = train("configs/train/stage2.yaml", root / "stage2", f"train.steps={STAGE2_STEPS}", init2)
    finally:
        torch.set_num_threads(threads)  # the run sets one thread per rank; give the other tests theirs back
    return {"text_lm": text, "clip": clip, "stage1": stage1, "stage2": stage2}
