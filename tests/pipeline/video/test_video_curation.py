"""End-to-end video curation of the synthetic clips, checked against their planted defects."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, outcomes
from PIL import Image

from vlmforge.common.storage import location
from vlmforge.pipeline.cli import main
from vlmforge.pipeline.config import VideoConfig, load_config
from vlmforge.pipeline.dedup.near import REASONS, VIDEO, Part, live_rows
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.sample_data.video import DUPLICATES, VIDEO_PROPORTIONS, write_video_sample_data
from vlmforge.pipeline.video.near import aligned_distance, resolve_video_duplicates

REASON = REASONS[VIDEO]
N = 48  # every planted kind at least once (3% of 48 rounds to 1 or 2)


def curate_video(src: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(
        ROOT / "configs/curate/video.yaml", [f"input.path={src}", f"output.path={out}", *overrides]
    )
    return run_curation(cfg, progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    src = tmp_path_factory.mktemp("clips")
    write_video_sample_data(src, N, seed=0, shard_size=16)
    truth = [json.loads(line) for line in (src / "ground_truth.jsonl").read_text().splitlines()]
    return src, {t["key"]: t for t in truth}


@pytest.fixture(scope="module")
def curated(clips, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("video_out")
    return out, curate_video(clips[0], out)


def test_sample_clips_hold_every_planted_kind(clips):
    _, truth = clips
    kinds = Counter(t["kind"] for t in truth.values())
    assert set(kinds) == set(VIDEO_PROPORTIONS)
    for t in truth.values():
        if t["kind"] in DUPLICATES:
            assert truth[t["duplicate_of"]]["kind"] == "clean"


def test_accounting_input_is_kept_plus_rejected_per_stage(curated, clips):
    out, manifest = curated
    kept, rejected = outcomes(out)
    assert sorted(kept + list(rejected)) == sorted(clips[1])
    totals = manifest["totals"]
    assert totals["input_rows"] == totals["output_rows"] + totals["rejected_rows"] == N
    stages = manifest["stages"]
    assert [s["stage"] for s in stages][:4] == ["read", "caption", "language", "video"]
    for s in stages:
        assert s["rows_in"] == s["rows_out"] + sum(s["reasons"].values())
    for a, b in zip(stages, stages[1:], strict=False):
        assert a["rows_out"] == b["rows_in"]
    by_reason = Counter((r["stage"], r["reason"]) for r in rejected.values())
    assert by_reason == Counter({(s["stage"], r): n for s in stages for r, n in s["reasons"].items() if n})


def test_every_planted_defect_is_rejected_with_its_reason(curated, clips):
    out, _ = curated
    kept, rejected = outcomes(out)
    wrong = []
    for key, t in clips[1].items():
        got = rejected.get(key)
        outcome = (got["stage"], got["reason"]) if got else (None, None)
        if outcome != (t["expected_stage"], t["expected_reason"]):
            wrong.append((key, t["kind"], outcome))
    assert not wrong
    assert len(kept) == sum(t["kind"] == "clean" for t in clips[1].values())


def test_reencoded_resized_and_trimmed_copies_cluster_with_their_original(curated, clips):
    out, _ = curated
    _, rejected = outcomes(out)
    data = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    copies = [t for t in clips[1].values() if t["kind"] in ("reencoded", "resized", "trimmed")]
    assert {t["kind"] for t in copies} == {"reencoded", "resized", "trimmed"}
    for t in copies:
        assert rejected[t["key"]]["detail"] == f"near duplicate of {t['duplicate_of']}"
        original = data[t["duplicate_of"]]
        assert original["dup_cluster"] == original["id"] and original["dup_cluster_size"] >= 2


def test_kept_rows_carry_sampled_frames(curated):
    out, _ = curated
    rows = pq.read_table(out / "data").to_pylist()
    assert rows
    for r in rows:
        assert r["image"] is None and r["video_codec"] == "h264"
        assert len(r["frames"]) == len(r["frame_times"]) == int(r["duration_s"])  # 1 fps over 3-5 s clips
        assert r["frame_times"] == pytest.approx([float(i) for i in range(len(r["frames"]))], abs=0.13)
        frame = Image.open(io.BytesIO(r["frames"][0]))
        assert frame.format == "JPEG" and frame.size == (r["width"], r["height"])


@pytest.mark.slow  # starts Ray Data actors: about 30 s on 2 cores
def test_output_is_deterministic_on_ray_and_a_rerun_resumes(curated, clips, ray_local, tmp_path):
    out, first = curated
    again = curate_video(clips[0], tmp_path / "ray", "ray.in_process_rows=0")  # phase 1 in Ray workers
    assert first["in_driver"] is True and again["in_driver"] is False
    assert again["totals"] == first["totals"]
    a = pq.read_table(out / "data").sort_by("id")
    b = pq.read_table(tmp_path / "ray" / "data").sort_by("id")
    assert a.equals(b)
    assert curate_video(clips[0], out).get("already_complete")


def test_plan_names_the_video_phases(curated, clips, capsys):
    out, _ = curated
    recipe = str(ROOT / "configs/curate/video.yaml")
    args = [
        "--input",
        str(clips[0]),
        "--output",
        str(out),
        "--plan",
        "--set",
        "video.near_dedup.max_distance=6",
    ]
    code = main(["curate", recipe, *args])
    text = capsys.readouterr().out
    assert code == 0 and "video_near_dedup" in text and "video.near_dedup.max_distance" in text


def test_stats_and_report_show_durations_and_frame_strips(curated, tmp_path):
    from vlmforge.pipeline.report.html import STRIP_CLIPS, write_report
    from vlmforge.pipeline.report.stats import compute_stats

    out, manifest = curated
    stats = compute_stats(out)
    kept = manifest["totals"]["output_rows"]
    assert stats["duration_s"]["count"] == stats["fps"]["count"] == kept
    assert 3.0 <= stats["duration_s"]["min"] <= stats["duration_s"]["max"] <= 5.0
    assert sum(b["count"] for b in stats["duration_histogram"]) == kept
    write_report([out], tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert '<section id="video" data-status="computed">' in html
    assert html.count('class="strip"') == min(STRIP_CLIPS, kept)


def brute_force_clusters(parts: list[Part], exact_dir: str, cfg: VideoConfig) -> dict[str, tuple]:
    """(reason, detail, dup_cluster, dup_cluster_size) of every live clip, from every pair of clips aligned
    (no LSH buckets, no shuffles): the reference the distributed phase must reproduce."""
    columns = ["frame_phashes", "duration_s", "width", "height"]
    rows = pa.concat_tables([live_rows(p, exact_dir, columns)[0] for p in parts]).to_pylist()
    nd = cfg.near_dedup
    parent = list(range(len(rows)))

    def root(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for a in range(len(rows)):
        for b in range(a):
            sa, sb = (np.asarray(rows[k]["frame_phashes"] or [], np.uint64) for k in (a, b))
            shift = round(nd.max_shift_s * cfg.fps)
            d = aligned_distance(sa, sb, shift, nd.min_overlap) if len(sa) * len(sb) else None
            if d is not None and d[0] <= nd.max_distance:
                parent[root(a)] = root(b)
    def survivor_order(r: dict) -> tuple:
        return -(r["duration_s"] or 0), -(r["width"] or 0) * (r["height"] or 0), r["id"]

    groups: dict[int, list[dict]] = {}
    for k, r in enumerate(rows):
        groups.setdefault(root(k), []).append(r)
    out = {}
    for group in groups.values():
        best = min(group, key=survivor_order)
        for r in group:
            lost = r is not best
            detail = f"near duplicate of {best['id']}" if lost else None
            out[r["id"]] = (REASON if lost else None, detail, best["id"], len(group))
    return out


def test_video_near_dedup_on_ray_equals_the_driver_run_and_brute_force(curated, ray_local, tmp_path):
    out, manifest = curated
    work = out / "_work"
    phase1 = sorted(p for p in (work / "phase1").glob("*.parquet") if p.stem.count(".") == 0)
    parts = [Part(i, p.stem, str(p)) for i, p in enumerate(phase1)]
    (exact_dir,) = (work / "exact_dedup").iterdir()
    cfg = VideoConfig()
    driver_dir = next((work / "video_near_dedup").iterdir())  # the curation's run, in the driver
    # 3 partitions and the distributed components path (no edge list is small enough to label locally)
    found = resolve_video_duplicates(parts, location(exact_dir), location(tmp_path / "r"), cfg, 3, 0)
    assert found["counters"]["cc_local"] == 0 and set(found["reasons"]) == {REASON}
    expected = brute_force_clusters(parts, str(exact_dir), cfg)
    assert sum(1 for v in expected.values() if v[0]) == found["reasons"][REASON] >= 3
    for part in parts:
        ray_rows = pq.read_table(tmp_path / "r" / f"{part.name}.parquet")
        assert ray_rows.equals(pq.read_table(driver_dir / f"{part.name}.parquet"))
        for r in ray_rows.to_pylist():
            got = (r["reason"], r["detail"], r["dup_cluster"], r["dup_cluster_size"])
            assert expected.pop(r["id"]) == got
    assert not expected  # every live clip has its row
