"""The HTML report: every section rendered (with data or an 'absent' note), thresholds drawn, bounded image
work, rejected thumbnails bounded per reason, and the page checked in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, curate
from helpers import jpeg, raw_batch
from PIL import Image

from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.report import gallery, thumbnails
from vlmforge.pipeline.report.html import Options, section_ids, write_report
from vlmforge.pipeline.report.stats import compare_kept_ids
from vlmforge.pipeline.report.thumbnails import gallery_thumbnails
from vlmforge.pipeline.schema import OUTPUT_SCHEMA

ABSENT = "not computed in this run (enable"


def _sections(html: str) -> dict[str, tuple[str, str]]:
    """section id -> (data-status, inner html)."""
    found = re.findall(r'<section id="([^"]+)" data-status="([^"]+)">(.*?)</section>', html, re.S)
    return {sid: (status, body) for sid, status, body in found}


LATER_COLUMNS = ("clip_score", "dup_cluster", "dup_cluster_size", "ocr_text", "diversity_keep_prob")


def _variant(src: Path, dst: Path, filled: bool) -> dict:
    """A copy of a curated output whose later-phase columns and manifest entries are all absent
    (`filled=False`) or all present (`filled=True`), whichever phases this checkout runs."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_work"))
    manifest = json.loads((dst / "manifest.json").read_text())
    ocr_rows = total = 0
    for f in manifest["files"]["data"]:
        t = pq.read_table(dst / f)
        h = [zlib.crc32(i.encode()) for i in t["id"].to_pylist()]
        ocr = ["OPEN 24 HOURS" if x % 4 == 0 else None for x in h]
        ocr_rows += sum(o is not None for o in ocr)
        total += t.num_rows
        cols = {
            "clip_score": pa.array([0.2 + 0.6 * (x % 1000) / 1000 for x in h], pa.float32()),
            "dup_cluster": t["id"],
            "dup_cluster_size": pa.array([1 + (x % 7 == 0) * (1 + x % 5) for x in h], pa.int32()),
            "ocr_text": pa.array(ocr, pa.string()),
            "diversity_keep_prob": pa.array([(x % 100) / 100 for x in h], pa.float32()),
        }
        for name in LATER_COLUMNS:
            col = cols[name] if filled else pa.nulls(t.num_rows, OUTPUT_SCHEMA.field(name).type)
            t = t.set_column(t.schema.get_field_index(name), name, col)
        pq.write_table(t.cast(OUTPUT_SCHEMA), dst / f)
    for key in ("alignment", "ocr", "quality", "diversity"):
        manifest["config"].pop(key, None)
    manifest.pop("diversity", None)
    if filled:
        manifest["config"]["alignment"] = {"enabled": True, "min_score": 0.3}
        manifest["config"]["ocr"] = {"enabled": True}
        manifest["diversity"] = {
            "before": {"top_ngram_share": 0.125, "entropy": 9.5, "rows": 1400},
            "after": {"top_ngram_share": 0.0625, "entropy": 10.25, "rows": total},
            "top_ngrams": {"before": [["red circle", 0.125], ["blue square", 0.05]],
                           "after": [["red circle", 0.0625], ["blue square", 0.04]]},
        }
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return {"ocr_share": ocr_rows / total}


@pytest.fixture(scope="module")
def report(curated, tmp_path_factory) -> tuple[Path, str]:
    """The report of the curated sample, as this checkout's recipe made it."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report([curated[0]], path)
    return path, path.read_text()


@pytest.fixture(scope="module")
def bare_report(curated, tmp_path_factory) -> str:
    """The report of an output where no later phase (alignment, near dedup, OCR, diversity) ran."""
    base = tmp_path_factory.mktemp("bare")
    _variant(curated[0], base / "out", filled=False)
    write_report([base / "out"], base / "report.html")
    return (base / "report.html").read_text()


@pytest.fixture(scope="module")
def enriched_report(curated, tmp_path_factory) -> tuple[Path, str, dict]:
    """The report of an output where every later phase filled its columns and manifest entries."""
    base = tmp_path_factory.mktemp("enriched")
    facts = _variant(curated[0], base / "out", filled=True)
    write_report([base / "out"], base / "report.html")
    return base / "report.html", (base / "report.html").read_text(), facts


def test_every_section_rendered_and_absent_data_said_plainly(bare_report, report, curated):
    html = bare_report
    _, manifest = curated
    sections = _sections(html)
    assert list(sections) == section_ids() == list(_sections(report[1]))
    assert "compare" not in sections
    for sid in ("quality", "alignment", "ocr", "diversity"):
        status, body = sections[sid]
        assert status == "not-computed" and ABSENT in body, sid
    # Near-dup cluster sizes are absent, but the exact-dedup figures in the same section are not.
    status, body = sections["duplicates"]
    assert status == "computed" and "dup_cluster_size" in body and ABSENT in body and "exact_dedup" in body
    for sid in ("overview", "funnel", "languages", "captions", "images", "gallery-kept", "gallery-rejected"):
        assert sections[sid][0] == "computed" and ABSENT not in sections[sid][1], sid
    funnel = sections["funnel"][1]
    for s in manifest["stages"]:
        assert f"<code>{s['stage']}</code>" in funnel
        for reason, n in s["reasons"].items():
            assert f"{s['stage']}/{reason}" in sections["gallery-rejected"][1]
            assert f"{reason} <b>{n:,}</b>" in funnel
    # Thresholds from manifest["config"] are drawn where the data is plotted.
    assert "min_score 0.5" in sections["languages"][1] and 'class="threshold"' in sections["languages"][1]
    assert f"min_side {manifest['config']['image']['min_side']}" in sections["images"][1]
    # Self-contained: a CSP that allows nothing but inline styles and data: images; no script, no URL.
    assert "default-src 'none'; img-src data:" in html
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', html)


def test_present_data_is_plotted_with_thresholds(enriched_report):
    _, html, facts = enriched_report
    sections = _sections(html)
    assert list(sections) == section_ids()
    for sid in ("alignment", "duplicates", "ocr", "diversity"):
        status, body = sections[sid]
        assert status == "computed" and ABSENT not in body, sid
    align = sections["alignment"][1]
    assert 'class="threshold"' in align and "threshold 0.3" in align and "<svg" in align
    assert "Duplicate cluster size" in sections["duplicates"][1]
    assert f"{100 * facts['ocr_share']:.1f}%" in sections["ocr"][1]
    div = sections["diversity"][1]
    assert "top_ngram_share" in div and "0.125" in div and "0.0625" in div and "red circle" in div
    assert "Diversity keep probability" in div
    assert sections["quality"][0] == "not-computed"  # still no quality_score column


def test_empty_output_renders_every_section(curated, tmp_path):
    out, manifest = curated
    empty = tmp_path / "empty"
    shutil.copytree(out / "rejected", empty / "rejected")
    m = {**manifest, "files": {**manifest["files"], "data": []}}
    m["totals"] = {**m["totals"], "output_rows": 0}
    (empty / "manifest.json").write_text(json.dumps(m))
    write_report([empty], tmp_path / "r.html")
    sections = _sections((tmp_path / "r.html").read_text())
    assert list(sections) == section_ids()
    assert "no kept rows" in sections["captions"][1] and "no kept rows" in sections["gallery-kept"][1]


def test_only_sampled_images_are_decoded(curated, tmp_path, monkeypatch):
    out, manifest = curated
    opened, groups = [], []
    real_open, real_read = thumbnails.Image.open, pq.ParquetFile.read_row_group

    def counting_open(fp, *a, **kw):
        opened.append(1)
        return real_open(fp, *a, **kw)

    def counting_read(self, i, columns=None, **kw):
        groups.append(columns)
        return real_read(self, i, columns=columns, **kw)

    monkeypatch.setattr(thumbnails.Image, "open", counting_open)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting_read)
    write_report([out], tmp_path / "r.html", Options(kept_examples=5, rejected_per_reason=3))
    assert manifest["totals"]["output_rows"] > 500
    assert len(opened) == 5  # the kept sample only; rejected rows carry their own thumbnails
    assert 0 < len(groups) <= 5 and all("image" in c for c in groups)
    html = (tmp_path / "r.html").read_text()
    assert len(re.findall(r'<div class="ex kept">', html)) == 5


def test_kept_sample_is_stable_across_runs(curated):
    out, manifest = curated
    index = gallery.KeptIndex.read(out, manifest)
    first = [e.id for e in gallery.kept_examples(index, 10)]
    ids = index.ids.to_pylist()
    expected = sorted(ids, key=lambda i: zlib.crc32(i.encode()))[:10]
    assert first == expected
    # Restricting to a subset (as --compare does) picks from that subset only, in the same order.
    mask = pc.is_in(index.ids.combine_chunks(), value_set=pa.array(expected[3:]))
    mask = mask.to_numpy(zero_copy_only=False)
    assert [e.id for e in gallery.kept_examples(index, 4, mask)] == expected[3:7]


def test_rejected_thumbnails_bounded_per_reason_per_part(curated):
    out, manifest = curated
    per_reason = manifest["config"]["output"]["gallery_per_reason"]
    with_thumb: Counter = Counter()
    for f in manifest["files"]["rejected"]:
        t = pq.read_table(out / f, columns=["stage", "reason", "thumbnail"])
        t = t.filter(pc.is_valid(t["thumbnail"]))
        counts = Counter(zip(t["stage"].to_pylist(), t["reason"].to_pylist(), strict=True))
        assert max(counts.values()) <= per_reason, f
        with_thumb.update(counts)
        for th in t["thumbnail"].drop_null().to_pylist():
            img = Image.open(io.BytesIO(th))
            assert img.format == "JPEG" and max(img.size) <= thumbnails.THUMB_SIDE
    for key in (("caption", "boilerplate"), ("language", "wrong_language"), ("image", "too_small")):
        assert with_thumb[key] > 0, key
    assert with_thumb[("image", "corrupt_image")] == 0  # undecodable: no thumbnail, no crash


def test_gallery_thumbnails_deterministic_and_bounded():
    rows = [{"id": f"r{i}", "image": jpeg((120, 80), (i * 20, 90, 40)), "caption": "x"} for i in range(12)]
    rows[0]["image"] = b"not an image"
    reasons = ["a" if i % 2 else "b" for i in range(12)]
    batch = raw_batch(rows)

    def picked(order: list[int], per_reason: int, batches: int = 1) -> set[str]:
        taken: Counter = Counter()
        out = set()
        for chunk in (order[k::batches] for k in range(batches)):
            b = batch.take(pa.array(chunk))
            thumbs = gallery_thumbnails(b, [reasons[i] for i in chunk], taken, per_reason)
            out |= {b["id"][j].as_py() for j in range(len(chunk)) if thumbs[j].is_valid}
            assert taken["a"] <= per_reason and taken["b"] <= per_reason
        return out

    forward = picked(list(range(12)), 2)
    assert forward == picked(list(reversed(range(12))), 2)  # by id hash, not by position
    assert len(forward) <= 4 and {reasons[int(i[1:])] for i in forward} == {"a", "b"}
    assert len(picked(list(range(12)), 2, batches=3)) <= 4  # the bound holds across batches
    assert picked(list(range(12)), 0) == set()
    assert gallery_thumbnails(batch, reasons, Counter(), 100)[0].is_valid is False  # bad bytes: null


# ------------------------------------------------------------------------------------------ browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if c and Path(c).is_file():
            return c
    return None


def _inspect(browser, html: Path, shot: Path) -> dict:
    """Load `html` from file://, then report console errors, section ids, broken images; screenshot it."""
    page = browser.new_page(viewport={"width": 1320, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(html.resolve().as_uri(), wait_until="load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    facts = page.evaluate("""() => ({
        sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
        images: document.images.length,
        broken: Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.alt),
        width: document.documentElement.scrollWidth,
    })""")
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    return {**facts, "errors": errors}


@pytest.fixture(scope="module")
def compare_report(curated, sample_dir, tmp_path_factory) -> Path:
    """`vlmforge stats A --compare B --html`, B a second curation run of the sample with other settings."""
    base = tmp_path_factory.mktemp("compare")
    # Run B: a stricter image threshold, and dedup off (which also skips phase 2's Ray shuffles), so each
    # run keeps ids the other rejected.
    cheap = ["exact_dedup.image=false", "exact_dedup.caption=false"]
    if "near_dedup" in CurateConfig.model_fields:
        cheap += ["near_dedup.caption.enabled=false", "near_dedup.image.enabled=false"]
    curate(sample_dir, base / "min_side_150", "image.min_side=150", *cheap)
    html = base / "compare.html"
    r = subprocess.run([sys.executable, "-m", "vlmforge.pipeline.cli", "stats", str(curated[0]), "--compare",
                        str(base / "min_side_150"), "--html", str(html)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return html


def test_compare_shows_both_runs_and_the_kept_id_difference(compare_report, curated):
    sections = _sections(compare_report.read_text())
    assert list(sections) == section_ids(compare=True)
    body = sections["compare"][1]
    only_a, only_b = (int(re.search(rf"Kept only by {t} \(([\d,]+)\)", body).group(1).replace(",", ""))
                      for t in "AB")
    assert (only_a, only_b) == tuple(
        compare_kept_ids(curated[0], compare_report.parent / "min_side_150")[k] for k in ("only_a", "only_b")
    )
    assert only_a > 0 and only_b > 0
    assert "B: image/too_small" in body and "A: exact_dedup/duplicate_" in body
    # Every figure section shows both runs, side by side.
    for sid in ("funnel", "languages", "captions", "images", "gallery-kept", "gallery-rejected"):
        assert sections[sid][1].count('class="run-tag"') == 2, sid
    assert "min_side 150" in sections["images"][1] and "min_side 64" in sections["images"][1]
    # The recipe difference, with the first phase each key reruns.
    assert "<code>image.min_side</code>" in body and "<code>exact_dedup.image</code>" in body
    cell = r"</td><td[^>]*>"
    changed = re.search(rf"<code>image.min_side</code>{cell}(\d+){cell}(\d+){cell}(\w+)", body)
    assert changed and changed.groups() == ("64", "150", "phase1")


def test_report_in_headless_chromium(report, enriched_report, compare_report, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    compare_html = compare_report
    broken = tmp_path / "broken.html"  # a control: the checks below must catch a bad image and an error
    broken.write_text(report[1].replace("</main>", '<img alt="bad" src="data:image/jpeg;base64,AAAA">'
                                        '<img alt="net" src="https://example.invalid/x.png"></main>'))
    pages = {"single": (report[0], False), "enriched": (enriched_report[0], False),
             "compare": (compare_html, True)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            results = {n: _inspect(browser, path, tmp_path / f"{n}.png") for n, (path, _) in pages.items()}
            control = _inspect(browser, broken, tmp_path / "broken.png")
        finally:
            browser.close()
    for name, (_, compare) in pages.items():
        res = results[name]
        print(f"screenshot ({name}): {tmp_path / f'{name}.png'}")
        assert res["errors"] == [], (name, res["errors"])
        assert res["sections"] == section_ids(compare), name
        assert res["images"] >= 24 and res["broken"] == [], (name, res["broken"])
        assert res["width"] <= 1320, f"{name}: page wider than the viewport ({res['width']} px)"
        assert (tmp_path / f"{name}.png").stat().st_size > 50_000
    assert set(control["broken"]) == {"bad", "net"} and control["errors"], control


def test_tally_gives_numpys_figures_without_keeping_the_rows():
    from vlmforge.pipeline.report.stats import Tally

    rng = np.random.default_rng(0)
    for values in (rng.integers(1, 40, 200_000).astype(float), rng.random(150_000) * 3, np.array([7.0])):
        t = Tally()
        for chunk in np.array_split(values, 9):
            t.add(np.concatenate([chunk, [np.nan]]))  # nulls are not counted
        s = t.summary()
        q = np.percentile(values, [5, 50, 95])
        assert s["count"] == values.size and s["min"] == values.min() and s["max"] == values.max()
        assert [s["p5"], s["median"], s["p95"]] == pytest.approx(q.tolist(), rel=1e-12)
        assert s["mean"] == round(float(values.mean()), 3)
        counts, _ = np.histogram(values, bins=10)
        assert [b["count"] for b in t.histogram()] == counts.tolist()
    assert Tally().summary() == {"count": 0} and Tally().histogram() == []
