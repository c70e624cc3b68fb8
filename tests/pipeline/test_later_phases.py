"""The whole recipe in one job: alignment filter (phase 3), diversity resampling (phase 4), OCR and synthetic
captions (phase 5), with the tiny recipe's own CLIP and stage-1 checkpoints, on the sample data."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import curate
from helpers import outcomes

from vlmforge.pipeline.sample_data.vocab import COLOURS, SHAPES

pytestmark = pytest.mark.slow  # trains the tiny recipe, then curates with it

LATER = ["alignment", "diversity", "ocr", "synthetic_caption"]


def every_phase(recipe: dict, reference: Path) -> list[str]:
    """Overrides turning on every later phase, with the tiny recipe's CLIP and stage-1 checkpoints and a
    diversity vocabulary of the sample data's colour and shape words."""
    return [
        "alignment.enabled=true",
        f"alignment.checkpoint={recipe['clip'].output}",
        "alignment.drop_percentile=10",
        f"diversity.reference={reference}",
        "diversity.threshold=40",
        "synthetic_caption.enabled=true",
        f"synthetic_caption.checkpoint={recipe['stage1'].output}",
        "synthetic_caption.max_new_tokens=12",
    ]


@pytest.fixture(scope="module")
def full(recipe, sample_dir, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    reference = out.parent / "reference.txt"
    reference.write_text("\n".join(name.replace("_", " ") for name in [*COLOURS, *SHAPES]) + "\n")
    manifest = curate(sample_dir, out, *every_phase(recipe, reference))
    return out, manifest, reference


def _stage(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["stages"] if s["stage"] == name)


def test_later_stages_run_in_order_and_account_for_every_row(full, curated):
    out, m, _ = full
    names = [s["stage"] for s in m["stages"]]
    assert names[-6:] == ["exact_dedup", "near_dedup", *LATER]
    kept, rejected = outcomes(out)
    assert len(kept) + len(rejected) == m["totals"]["input_rows"] == curated[1]["totals"]["input_rows"]
    for name in LATER:
        s = _stage(m, name)
        assert s["rows_in"] == s["rows_out"] + s["rejected"]
    assert _stage(m, "ocr")["rejected"] == _stage(m, "synthetic_caption")["rejected"] == 0


def test_alignment_drops_the_global_percentile(full):
    out, m, _ = full
    s = _stage(m, "alignment")
    assert s["reasons"]["low_alignment"] == pytest.approx(0.10 * s["rows_in"], abs=0.02 * s["rows_in"])
    threshold = m["alignment"]["threshold"]
    rows = pads.dataset(out / "data").to_table(columns=["clip_score"])["clip_score"].to_pylist()
    assert all(r is not None and r >= threshold for r in rows)
    _, rejected = outcomes(out)
    low = [r for r in rejected.values() if r["reason"] == "low_alignment"]
    assert low and all(r["stage"] == "alignment" and "<" in r["detail"] for r in low)


def test_diversity_resamples_and_records_its_statistics(full):
    out, m, _ = full
    s = _stage(m, "diversity")
    assert 0 < s["reasons"]["diversity_resample"] < s["rows_in"]
    d = m["diversity"]
    assert d["after"]["entropy"] > d["before"]["entropy"]
    probs = pads.dataset(out / "data").to_table(columns=["diversity_keep_prob"])["diversity_keep_prob"]
    assert all(p is not None and 0 < p <= 1 for p in probs.to_pylist())


def test_ocr_text_is_appended_to_the_caption(full, ground_truth):
    out, _, _ = full
    rows = pads.dataset(out / "data").to_table(columns=["id", "caption", "original_caption", "ocr_text"])
    with_text = [r for r in rows.to_pylist() if r["ocr_text"]]
    assert with_text, "no OCR text in any kept row"
    for r in with_text:
        assert r["caption"].endswith(" " + r["ocr_text"]) and r["caption"].startswith(r["original_caption"])
    truth = {k for k, t in ground_truth.items() if t.get("text_in_image")}
    found = {r["id"] for r in with_text}
    kept_with_text = truth & set(rows["id"].to_pylist())
    assert len(found & kept_with_text) >= 0.8 * len(kept_with_text)


def test_synthetic_captions_fill_nearly_every_row(full):
    out, _, _ = full
    captions = pads.dataset(out / "data").to_table(columns=["synthetic_caption"])["synthetic_caption"]
    filled = sum(bool(c and c.strip()) for c in captions.to_pylist())
    assert filled >= 0.99 * len(captions)


def test_rerun_with_every_phase_is_a_no_op(full, recipe, sample_dir):
    out, m, reference = full
    again = curate(sample_dir, out, *every_phase(recipe, reference))
    assert again.get("already_complete") is True and again["totals"] == m["totals"]
