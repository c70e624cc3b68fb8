"""The layout move kept behaviour: a run on sample data gives the per-stage counts, kept ids and
(id, stage, reason) rejections recorded before the move (tests/pipeline/sample_outputs.json).

Re-record on purpose only, when a change is meant to alter results:
    python tests/pipeline/test_same_outputs.py tests/pipeline/sample_outputs.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT

from vlmforge.pipeline.config import load_config
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.sample_data import write_sample_data

pytestmark = pytest.mark.slow  # two curate runs of 1,500 pairs

FIXTURE = Path(__file__).parent / "sample_outputs.json"
N, SEED, OVERRIDES = 1500, 3, ["diversity.threshold=40"]


def outputs(work: Path, *overrides: str) -> dict:
    """Curate N sample pairs with the default recipe; its stage counts, kept ids and rejections."""
    raw, out = work / "raw", work / "out"
    if not raw.exists():
        write_sample_data(raw, n=N, seed=SEED)
    cfg = load_config(
        ROOT / "configs/curate/default.yaml",
        [*OVERRIDES, f"input.path={raw}", f"output.path={out}", *overrides],
    )
    m = run_curation(cfg, progress=False, log=lambda _: None)
    keys = ("stage", "rows_in", "rows_out", "rejected", "reasons")
    kept = [i for f in m["files"]["data"] for i in pq.read_table(out / f, columns=["id"])["id"].to_pylist()]
    rejected = [
        [r["id"], r["stage"], r["reason"]]
        for f in m["files"]["rejected"]
        for r in pq.read_table(out / f, columns=["id", "stage", "reason"]).to_pylist()
    ]
    return {
        "n": N,
        "seed": SEED,
        "stages": [{k: s[k] for k in keys} for s in m["stages"]],
        "kept": sorted(kept),
        "rejected": sorted(rejected),
    }


@pytest.mark.parametrize("in_process_rows", [N, 0], ids=["driver", "ray"])
def test_outputs_equal_the_recorded_ones(tmp_path, in_process_rows):
    want = json.loads(FIXTURE.read_text())
    got = outputs(tmp_path, f"ray.in_process_rows={in_process_rows}")
    assert got["stages"] == want["stages"]
    assert got["kept"] == want["kept"]
    assert got["rejected"] == [list(r) for r in want["rejected"]]
    assert {s["stage"] for s in got["stages"] if s["rejected"]} >= {
        "caption",
        "language",
        "image",
        "exact_dedup",
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Path(sys.argv[1]).write_text(json.dumps(outputs(Path(d)), indent=0))
