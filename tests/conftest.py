"""Session fixtures: one local Ray for all tests, one sample dataset, one curated output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.job import run_curation
from pipeline.ray_runner import start_ray
from pipeline.sample_data import write_sample_data

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_N = 2000


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
    with open(sample_dir / "ground_truth.jsonl") as f:
        return {row["key"]: row for row in map(json.loads, f)}


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
    return out, curate(sample_dir, out)
