"""Proxy evaluation of curation (`vlmforge eval-curation`): the metrics on hand-built embeddings, the held-out
set kept apart from training sets by image hash and normalised caption, and one tiny end-to-end run that
writes the JSON, the terminal table and the report section.

The curated-vs-unfiltered comparison over 3 seeds and its timing are in benchmarks/eval_curation.py."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vlmforge.pipeline.cli import main
from vlmforge.pipeline.evaluate.eval_curation import decontaminate
from vlmforge.pipeline.evaluate.heldout import overlap, pair_keys, raw_pairs, read_eval_set
from vlmforge.pipeline.filter.text import normalize_for_dedup
from vlmforge.pipeline.report.html import write_report
from vlmforge.pipeline.sample_data import write_eval_set, write_sample_data
from vlmforge.pipeline.sample_data.reading import read_ground_truth
from vlmforge.pipeline.schema import OUTPUT_SCHEMA, conform
from vlmforge.training import retrieval
from vlmforge.training.eval_results import differences, summarise, table

# ------------------------------------------------------------------------------------------------ metrics


def test_ranks_count_ties_against_the_query():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.4, 0.3], [0.7, 0.7, 0.7]])
    assert retrieval.ranks(sim).tolist() == [0, 1, 2]  # row 2: a three-way tie ranks last


def test_recall_at_k_on_hand_built_embeddings():
    image = torch.eye(4)
    assert retrieval.retrieval(image, torch.eye(4), pool=4, ks=(1, 2)) == {
        "i2t_r1": 1.0, "i2t_r2": 1.0, "t2i_r1": 1.0, "t2i_r2": 1.0}
    text = torch.eye(4)[[1, 0, 2, 3]]  # captions 0 and 1 swapped
    got = retrieval.retrieval(image, text, pool=4, ks=(1, 2))
    # Image 0's caption now scores 0, as do captions 2 and 3 (a tie, counted against it): rank 3.
    assert got == {"i2t_r1": 0.5, "i2t_r2": 0.5, "t2i_r1": 0.5, "t2i_r2": 0.5}
    # In pools of two ({0, 1} and {2, 3}) the swapped caption is second of two.
    assert retrieval.retrieval(image, text, pool=2, ks=(1, 2))["i2t_r2"] == 1.0
    assert [p.tolist() for p in retrieval.pools(7, 3)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [p.tolist() for p in retrieval.pools(2, 100)] == [[0, 1]]


def test_zero_shot_uses_the_mean_of_each_class_prompts():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    prompts = torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [0.0, 1.0]]])
    classes = retrieval.class_embeddings(prompts)
    assert torch.allclose(classes.norm(dim=1), torch.ones(2))
    # Image 2 is nearer class 0's mean (0.82) than class 1 (0.80) although nearer class 1's first prompt.
    assert retrieval.zero_shot(image, classes, torch.tensor([0, 1, 0])) == 1.0
    assert retrieval.zero_shot(image, classes, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert retrieval.prompts_for("octagon", ["{a} {label}", "an image of {a} {label}"]) == [
        "an octagon", "an image of an octagon"]


def test_summary_and_table_over_seeds():
    def result(values: list[float]) -> dict:
        per_seed = [{"i2t_r5": v} for v in values]
        return {"summary": summarise(per_seed), "train_rows": 10, "eval_set": {"fingerprint": "f"},
                "settings": {"chance": {"i2t_r5": 0.05}, "pool": 100, "seeds": [0, 1, 2]}}

    a, b = result([0.2, 0.3, 0.4]), result([0.4, 0.5, 0.6])
    assert a["summary"]["i2t_r5"]["mean"] == pytest.approx(0.3)
    assert a["summary"]["i2t_r5"]["std"] == pytest.approx(0.1)  # sample sd
    header, rows = table([("a", a), ("b", b)])
    assert header == ["run", "rows", "image→text R@5"]
    assert rows == [["a", "10", "0.300 ± 0.100"], ["b", "10", "0.500 ± 0.100"], ["b − a", "", "+0.200"],
                    ["chance", "", "0.050"]]
    assert differences(a, b) == []
    b["settings"]["pool"] = 50
    assert differences(a, b) == ["settings.pool"]


# --------------------------------------------------------------------------------------------- the data


def _decodes(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except Exception:  # noqa: BLE001 - the sample's corrupt and truncated rows
        return None


def fake_curated(raw: Path, out: Path, kinds: set[str] | None, extra: list[dict] = ()) -> Path:
    """A curated-output layout (data/*.parquet, a minimal manifest) of the raw sample rows of `kinds` (None:
    every row whose image decodes and caption is not blank), plus `extra` rows; no Ray needed."""
    truth = read_ground_truth(raw)
    rows = list(extra)
    for batch in raw_pairs(raw):
        for r in batch.to_pylist():
            if kinds is not None and truth[r["id"]]["kind"] not in kinds:
                continue
            if r["read_error"] or not (r["caption"] or "").strip():
                continue
            rows.append({"id": r["id"], "image": r["image"], "caption": r["caption"]})
    kept = []
    for r in rows:
        if (img := _decodes(r["image"])) is not None:
            sha = hashlib.sha256(r["image"]).hexdigest()
            kept.append({**r, "original_caption": r["caption"], "sha256": sha, "width": img.width,
                         "height": img.height, "lang": "en", "caption_words": len(r["caption"].split()),
                         "image_format": "JPEG"})
    (out / "data").mkdir(parents=True)
    pq.write_table(conform(pa.Table.from_pylist(kept), OUTPUT_SCHEMA), out / "data" / "part-00000-0.parquet")
    totals = {"input_rows": len(kept), "output_rows": len(kept), "rejected_rows": 0}
    manifest = {"totals": totals, "stages": [], "phases": {}, "config": {},
                "files": {"data": ["data/part-00000-0.parquet"], "rejected": []}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A small raw sample, two curated-layout runs of it (clean rows only; every usable row) and an eval set
    written apart from all three."""
    base = tmp_path_factory.mktemp("evalcur")
    raw = base / "raw"
    write_sample_data(raw, n=160, seed=0, shard_size=80)
    clean = fake_curated(raw, base / "clean", {"clean"})
    everything = fake_curated(raw, base / "all", None)
    assert main(["sample-data", str(base / "eval"), "--eval", "--n", "120", "--exclude", str(raw),
                 "--exclude", str(clean)]) == 0
    return {"base": base, "raw": raw, "clean": clean, "all": everything, "eval": base / "eval"}


def test_eval_set_shares_no_image_hash_or_caption_with_the_training_sets(data):
    eval_keys = pair_keys(data["eval"])
    assert len(eval_keys.images) == len(eval_keys.captions) == 120
    for name in ("raw", "clean", "all"):
        train = pair_keys(data[name])
        assert train.images and train.captions
        assert not eval_keys.images & train.images, name
        assert not eval_keys.captions & train.captions, name
    labels = [json.loads(line) for line in (data["eval"] / "labels.jsonl").read_text().splitlines()]
    eval_set = read_eval_set(data["eval"])
    assert [x["id"] for x in labels] == eval_set.ids and eval_set.labels == [x["label"] for x in labels]
    assert len(set(eval_set.labels)) >= 8  # shapes


def test_a_curated_output_reads_as_an_eval_set(data):
    eval_set = read_eval_set(data["clean"])  # its data/ shards through the Parquet reader, ids kept
    ids = pq.read_table(data["clean"] / "data", columns=["id"])["id"].to_pylist()
    assert eval_set.ids == sorted(ids) and eval_set.labels is None and eval_set.unreadable == 0


def test_excluded_pairs_are_never_drawn(tmp_path):
    """By construction: with a set's keys excluded the same seed draws other pairs; without, the same."""
    write_eval_set(tmp_path / "a", 40, seed=3)
    write_eval_set(tmp_path / "a2", 40, seed=3)
    a = pair_keys(tmp_path / "a")
    assert pair_keys(tmp_path / "a2") == a  # deterministic
    write_eval_set(tmp_path / "b", 40, seed=3, exclude=a)
    b = pair_keys(tmp_path / "b")
    assert len(b.images) == len(b.captions) == 40
    assert not a.images & b.images and not a.captions & b.captions


def test_overlapping_eval_pairs_are_dropped_before_evaluating(data, tmp_path):
    eval_set = read_eval_set(data["eval"])
    img0, cap1 = eval_set.images[0], eval_set.captions[1]
    planted = [{"id": "p0", "image": img0, "caption": "a completely different caption"},
               {"id": "p1", "image": eval_set.images[5][:-1] + b"\0", "caption": "  " + cap1.upper() + "!"}]
    run = fake_curated(data["raw"], tmp_path / "run", {"clean"}, planted)
    masks = overlap(eval_set, pair_keys(run))
    assert masks["image"].nonzero()[0].tolist() == [0] and masks["caption"].nonzero()[0].tolist() == [1]
    kept, dropped = decontaminate(eval_set, [data["clean"], run])
    assert dropped == {"image": 1, "caption": 1, "either": 2}
    assert kept.ids == eval_set.ids[2:]
    assert normalize_for_dedup(cap1) in pair_keys(run).captions


# ------------------------------------------------------------------------------------------ end to end


def test_cli_errors_are_readable(data, tmp_path, capsys):
    args = ["--eval-set", str(data["eval"]), "--budget", "64"]
    assert main(["eval-curation", str(tmp_path / "nope"), *args]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["eval-curation", str(data["raw"]), *args]) == 2
    assert "not a curated output" in capsys.readouterr().err
    missing = ["--eval-set", str(tmp_path / "none"), "--budget", "64"]
    assert main(["eval-curation", str(data["clean"]), *missing]) == 2
    assert "sample-data DIR --eval" in capsys.readouterr().err
    assert main(["eval-curation", str(data["clean"]), *args[:2], "--budget", "8"]) == 2
    assert "less than one step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval-curation", "--help"])
    assert "--budget" in capsys.readouterr().out


@pytest.mark.slow  # ~25 s: four short CLIP trainings (2 outputs x 2 seeds) and their retrieval evals
def test_eval_curation_end_to_end(data, capsys, torch_one_thread):
    runs = [data["clean"], data["all"]]
    code = main(["eval-curation", *map(str, runs), "--eval-set", str(data["eval"]), "--budget", "32",
                 "--seeds", "0", "1", "--set", "train.micro_batch_size=8", "--set", "data.num_workers=0",
                 "--launcher", "inprocess", "--no-progress", "--pool", "40"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Proxy evaluation" in out and "all − clean" in out and "chance" in out
    results = [json.loads((r / "eval_curation.json").read_text()) for r in runs]
    for r, run in zip(results, runs, strict=True):
        s = r["settings"]
        assert (s["steps"], s["samples_seen"], s["seeds"]) == (4, 32, [0, 1])
        assert [x["seed"] for x in r["seeds"]] == [0, 1]
        for seed in r["seeds"]:
            assert set(seed["metrics"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zero_shot"}
            assert all(0 <= v <= 1 for v in seed["metrics"].values())
            assert (Path(seed["output"]) / "model.safetensors").is_file()
            assert Path(seed["output"]).parent == run / "eval_curation"
        assert r["summary"]["i2t_r5"]["n"] == 2
        assert r["eval_set"]["pairs"] == 120 and r["eval_set"]["dropped"]["either"] == 0
        assert s["chance"]["i2t_r5"] == pytest.approx(5 / 40)
    assert differences(*results) == []  # same eval set, tokenizer, recipe, budget, seeds
    assert results[0]["train_rows"] < results[1]["train_rows"]
    # The report shows both runs' results side by side; a run never evaluated says so.
    html_path = data["base"] / "compare.html"
    write_report(runs, html_path)
    body = re.search(r'<section id="eval-curation" data-status="computed">(.*?)</section>',
                     html_path.read_text(), re.S)
    assert body and "A clean" in body.group(1) and "B all − A clean" in body.group(1)
    bare = fake_curated(data["raw"], data["base"] / "bare", {"clean"})
    write_report([bare], data["base"] / "bare.html")
    bare_html = (data["base"] / "bare.html").read_text()
    assert re.search(r'<section id="eval-curation" data-status="not-computed">.*not computed in this run',
                     bare_html, re.S)
    # `vlmforge stats A --compare B` prints the table too.
    assert main(["stats", str(runs[0]), "--compare", str(runs[1])]) == 0
    assert "all − clean" in capsys.readouterr().out
