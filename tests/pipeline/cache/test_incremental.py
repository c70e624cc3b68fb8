"""Incremental re-curation: a changed config or input recomputes only from the first phase it affects."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, curate
from helpers import outcomes

from vlmforge.pipeline.cache.plan import gc, plan
from vlmforge.pipeline.config import load_config
from vlmforge.pipeline.sample_data import write_sample_data

pytestmark = pytest.mark.slow  # several whole curate runs


def _same_outcomes(a, b) -> None:
    kept_a, rej_a = outcomes(a)
    kept_b, rej_b = outcomes(b)
    assert sorted(kept_a) == sorted(kept_b)
    assert {k: (r["stage"], r["reason"], r["detail"]) for k, r in rej_a.items()} == {
        k: (r["stage"], r["reason"], r["detail"]) for k, r in rej_b.items()
    }


def _plan(sample_dir, out, *overrides: str) -> dict[str, dict]:
    cfg = load_config(
        ROOT / "configs/curate/default.yaml", [f"input.path={sample_dir}", f"output.path={out}", *overrides]
    )
    return {row["phase"]: row for row in plan(cfg)}


def test_new_near_dup_threshold_reuses_phase1_and_equals_a_fresh_run(curated, sample_dir, tmp_path):
    out = tmp_path / "incremental"
    shutil.copytree(curated[0], out)
    change = "near_dedup.caption.threshold=0.7"
    steps = _plan(sample_dir, out, change)
    assert steps["phase1"]["action"] == steps["exact_dedup"]["action"] == "reuse"
    assert steps["near_dedup"]["action"] == "run"
    assert "near_dedup.caption.threshold" in steps["near_dedup"]["why"]
    assert steps["finalize"]["action"] == "run"

    manifest = curate(sample_dir, out, change)
    assert manifest["phases"]["phase1"]["reused"] == manifest["input"]["parts"]
    # OCR reran as a phase, but every surviving row was read in the first run: no tesseract call.
    ocr = next(s for s in manifest["stages"] if s["stage"] == "ocr")
    assert ocr["counters"]["cached"] == ocr["rows_in"] > 0 and "ocr_run" not in ocr["counters"]
    assert manifest["fingerprints"]["exact_dedup"] == curated[1]["fingerprints"]["exact_dedup"]
    assert manifest["fingerprints"]["near_dedup"] != curated[1]["fingerprints"]["near_dedup"]
    fresh = tmp_path / "fresh"
    fresh_manifest = curate(sample_dir, fresh, change)
    assert fresh_manifest["phases"]["phase1"]["reused"] == 0
    assert manifest["totals"] == fresh_manifest["totals"]
    _same_outcomes(out, fresh)

    # Back to the first config: everything is cached, so only finalize runs and the output is as before.
    steps = _plan(sample_dir, out)
    assert [s["action"] for s in steps.values()][:-1] == ["reuse"] * (len(steps) - 1)
    again = curate(sample_dir, out)
    assert again["totals"] == curated[1]["totals"]
    _same_outcomes(out, curated[0])

    # gc keeps what this output's run refers to and drops the 0.7 run's near-dup results.
    freed = gc([out])
    assert freed["entries"] >= 1
    assert not (out / "_work/near_dedup" / manifest["fingerprints"]["near_dedup"]).exists()
    assert (out / "_work/near_dedup" / again["fingerprints"]["near_dedup"]).is_dir()
    assert curate(sample_dir, out).get("already_complete") is True


def test_a_new_input_shard_runs_phase1_for_that_shard_only(tmp_path, ray_local):
    raw = tmp_path / "raw"
    write_sample_data(raw, n=400, seed=3, shard_size=100)
    shards = sorted(raw.glob("*.tar"))
    held_back = tmp_path / shards[-1].name
    shards[-1].rename(held_back)
    out = tmp_path / "out"
    first = curate(raw, out)
    assert first["input"]["parts"] == 3

    held_back.rename(raw / held_back.name)
    steps = _plan(raw, out)
    assert steps["phase1"]["action"] == "run" and "3 of 4" in steps["phase1"]["why"]
    second = curate(raw, out)
    assert second["input"]["parts"] == 4 and second["phases"]["phase1"]["reused"] == 3
    assert second["totals"]["input_rows"] == 400
    fresh = curate(raw, tmp_path / "fresh")
    _same_outcomes(out, tmp_path / "fresh")
    assert fresh["totals"] == second["totals"]


def test_a_new_language_threshold_re_decides_phase1_without_decoding(curated, sample_dir, tmp_path):
    out = tmp_path / "incremental"
    shutil.copytree(curated[0], out)
    change = ("language.min_score=0.95", "language.lexicon_min_zipf=3.5")
    steps = _plan(sample_dir, out, *change)
    assert steps["phase1"]["action"] == "run" and "language.min_score" in steps["phase1"]["why"]

    manifest = curate(sample_dir, out, *change)
    stages = {s["stage"]: s for s in manifest["stages"]}
    before = {s["stage"]: s for s in curated[1]["stages"]}
    assert stages["language"]["rejected"] > before["language"]["rejected"]
    # Every measurement came from phase 1's row caches: no fastText call, no image decode, no signature.
    ran = manifest["phases"]["phase1"]["counters"]
    for name in ("language", "image", "minhash"):
        assert ran[name]["cached"] == stages[name]["rows_in"] > 0, name
    assert "fasttext_calls" not in ran["language"] and "decoded" not in ran["image"]
    assert curated[1]["phases"]["phase1"]["counters"]["image"]["decoded"] > 0
    fresh = curate(sample_dir, tmp_path / "fresh", *change)
    assert manifest["totals"] == fresh["totals"]
    _same_outcomes(out, tmp_path / "fresh")
