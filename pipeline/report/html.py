"""`vlmforge stats DIR --html PATH [--compare OTHER]`: one self-contained HTML report of a curated output.

Everything comes from `manifest.json` and column reads of the Parquet shards; images are decoded only for
the sampled kept pairs (rejected pairs carry their own small thumbnails). Charts are inline SVG and
thumbnails `data:` URIs, and a Content-Security-Policy forbids any other load: the file works offline.

The report is the list `SECTIONS`. A section names the per-row measures it needs (from `MEASURES`) and
renders every run; when its data is absent it says "not computed in this run (enable ...)" instead of
disappearing. A later phase adds its column to `MEASURES` and a `Section` (often `score_section(...)`).

Diversity statistics are read from the manifest when a phase writes them, as
`manifest["diversity"] = {"before": {"top_ngram_share": x, "entropy": y, ...}, "after": {...},
"top_ngrams": {"before": [[ngram, share], ...], "after": [...]}}` (any numeric metrics; `top_ngrams`
optional).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common import __version__
from vlmforge.common.storage import location
from vlmforge.pipeline.report import charts
from vlmforge.pipeline.report.gallery import (
    Example,
    KeptIndex,
    kept_examples,
    rejected_examples,
    rejected_reasons,
)
from vlmforge.pipeline.report.stats import (
    Measure,
    config_diff,
    load_manifest,
    rejected_table,
    scan_measures,
)


def _col(name: str) -> Measure:
    return (name,), lambda b: b.column(name)


def _aspect(b: pa.RecordBatch) -> pa.Array:
    return pc.divide(pc.cast(b.column("width"), pa.float64()), pc.cast(b.column("height"), pa.float64()))


# Per-row measures of the kept rows; each reads only its columns. Absent columns leave the measure out.
MEASURES: dict[str, Measure] = {
    "lang": _col("lang"),
    "lang_score": _col("lang_score"),
    "caption_chars": (("caption",), lambda b: pc.utf8_length(b.column("caption"))),
    "caption_words": _col("caption_words"),
    "width": _col("width"),
    "height": _col("height"),
    "aspect_ratio": (("width", "height"), _aspect),
    "image_format": _col("image_format"),
    "quality_score": _col("quality_score"),
    "clip_score": _col("clip_score"),
    "dup_cluster_size": _col("dup_cluster_size"),
    "ocr_chars": (("ocr_text",), lambda b: pc.utf8_length(b.column("ocr_text"))),
    "diversity_keep_prob": _col("diversity_keep_prob"),
    "duration_s": _col("duration_s"),
    "fps": _col("fps"),
}


@dataclass
class Options:
    """What the report samples."""

    kept_examples: int = 24
    rejected_per_reason: int = 6
    diff_examples: int = 8


@dataclass
class Run:
    """One curated output, read for the report."""

    tag: str
    path: Path
    manifest: dict
    values: dict[str, pa.ChunkedArray]
    index: KeptIndex
    kept: list[Example]
    rejected: dict[str, list[Example]]
    rejected_langs: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    _floats: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    def floats(self, name: str) -> np.ndarray | None:
        """The measure as float64 (nulls dropped), or None when it is absent or null in every row."""
        if name not in self._floats:
            col = self.values.get(name)
            absent = col is None or col.null_count == len(col)
            self._floats[name] = None if absent else col.drop_null().cast(pa.float64()).to_numpy()
        return self._floats[name]

    def config(self, dotted: str) -> Any:
        """A value of the run's recipe (manifest["config"]), e.g. "language.min_score"; None if unset."""
        node: Any = self.manifest.get("config", {})
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    @property
    def kept_rows(self) -> int:
        return int(self.manifest["totals"]["output_rows"])

    @property
    def input_rows(self) -> int:
        return int(self.manifest["totals"]["input_rows"])


@dataclass
class Body:
    """A rendered section: its HTML and whether any run had its data."""

    html: str
    computed: bool = True


@dataclass(frozen=True)
class Section:
    """One section of the report: an anchor id, a title, the measures it reads and its renderer."""

    id: str
    title: str
    render: Callable[[list[Run], Options], Body]
    measures: tuple[str, ...] = ()
    compare_only: bool = False


# ---------------------------------------------------------------------------------------------- helpers


def _absent(what: str, enable: str) -> str:
    return f'<p class="absent">{escape(what)}: not computed in this run (enable {escape(enable)})</p>'


def _figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _per_run(runs: list[Run], fn: Callable[[Run], str]) -> str:
    """One run: its panel. Two runs: their panels side by side, each under its tag and path."""
    if len(runs) == 1:
        return fn(runs[0])
    cols = "".join(
        f'<div class="run"><div class="run-tag"><b>{escape(r.tag)}</b> {escape(str(r.path))}</div>'
        f"{fn(r)}</div>"
        for r in runs
    )
    return f'<div class="compare">{cols}</div>'


def _summary(v: np.ndarray) -> str:
    q = np.percentile(v, [5, 50, 95])
    return (
        f"n={charts.fmt_num(int(v.size))} · median {charts.fmt_num(float(q[1]))} · "
        f"p5 {charts.fmt_num(float(q[0]))} · p95 {charts.fmt_num(float(q[2]))} · "
        f"max {charts.fmt_num(float(v.max()))}"
    )


@dataclass(frozen=True)
class Hist:
    """A histogram of one measure, with thresholds from each run's recipe."""

    measure: str
    title: str
    x_label: str
    integer: bool = False
    bins: int = 30
    thresholds: Callable[[Run], list[tuple[float, str]]] = lambda run: []
    color: str = charts.ACCENT
    clip: float = 0.995
    domain: tuple[float, float] | None = None


def _hist_panels(runs: list[Run], specs: list[Hist], enable: str) -> tuple[Callable[[Run], str], bool]:
    """A per-run renderer of the histograms in `specs`, and whether any run has their data.

    Bins, the x range (thresholds of every run included) and the y scale are shared across runs, so two
    runs' figures compare by eye.
    """
    shared = {}
    for h in specs:
        arrays = [a for r in runs if (a := r.floats(h.measure)) is not None]
        if arrays:
            edges, overflow = charts.bin_edges(arrays, h.bins, h.integer, h.clip, h.domain)
            ymax = max(int(charts.counts_in(a, edges).max(initial=0)) for a in arrays)
            drawn = [t for r in runs for t, _ in h.thresholds(r) if charts.on_chart(t, edges)]
            x_range = (min([float(edges[0]), *drawn]), max([float(edges[-1]), *drawn]))
            shared[h.measure] = (edges, overflow, ymax, x_range)

    def panel(run: Run) -> str:
        if run.kept_rows == 0:
            return '<p class="hint">no kept rows</p>'
        figs = []
        for h in specs:
            v = run.floats(h.measure)
            if v is None or h.measure not in shared:
                figs.append(_absent(f"{h.title} ({h.measure})", enable))
                continue
            edges, overflow, ymax, x_range = shared[h.measure]
            drawn = [(t, n) for t, n in h.thresholds(run) if charts.on_chart(t, edges)]
            off = [f"{escape(n)} {charts.fmt_num(t)} (off the chart)" for t, n in h.thresholds(run)
                   if (t, n) not in drawn]
            svg = charts.histogram(
                charts.counts_in(v, edges), edges, label=f"{h.title} — {run.tag or run.path.name}",
                x_label=h.x_label, thresholds=drawn, color=h.color, y_max=ymax, overflow=overflow,
                x_range=x_range, integer=h.integer,
            )
            caption = f"<b>{escape(h.title)}</b> · {_summary(v)}"
            if off:
                caption += " · " + ", ".join(off)
            figs.append(_figure(svg, caption))
        return "".join(figs)

    return panel, bool(shared)


def _figs(*parts: str) -> str:
    return f'<div class="figs">{"".join(parts)}</div>'


def _threshold(key: str, name: str) -> Callable[[Run], list[tuple[float, str]]]:
    """The threshold of `key` in the run's config, else the one its phase resolved (e.g. from a percentile)
    and recorded as manifest[section]["threshold"]."""

    def get(run: Run) -> list[tuple[float, str]]:
        v = run.config(key)
        if v is None:
            v = (run.manifest.get(key.split(".")[0]) or {}).get("threshold")
        return [(float(v), name)] if isinstance(v, int | float) and not isinstance(v, bool) else []

    return get


def _table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of already-escaped cells; the `numeric` columns are right-aligned."""

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    th = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return (
        f'<div class="table-wrap"><table class="data"><thead><tr>{th}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _cards(cards: list[tuple[str, str, str]]) -> str:
    """Big-number cards: (key, value, small print), all already escaped."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="s">{s}</div></div>'
        for k, v, s in cards
    ) + "</div>"


def _n(v: float) -> str:
    """An exact count for tables and cards: 1234567 -> 1,234,567."""
    return f"{int(v):,}"


def _pct(n: float, d: float) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


# --------------------------------------------------------------------------------------------- sections


def _overview(runs: list[Run], opts: Options) -> Body:
    def panel(run: Run) -> str:
        t, m = run.manifest["totals"], run.manifest
        cards = [
            ("input rows", _n(t["input_rows"]), ""),
            ("kept", _n(t["output_rows"]), _pct(t["output_rows"], t["input_rows"])),
            ("rejected", _n(t["rejected_rows"]), _pct(t["rejected_rows"], t["input_rows"])),
            ("stages", str(len(m["stages"])), ""),
        ]
        html = _cards(cards)
        inp = m.get("input", {})
        facts = [
            ("output", escape(str(run.path))),
            ("input", escape(f"{inp.get('path')} ({inp.get('format')}, {inp.get('parts')} parts)")),
            ("created", escape(str(m.get("created", "")))),
            ("recipe hash", f"<code>{escape(str(m.get('recipe_hash', '')))}</code>"),
            ("vlmforge", escape(str(m.get("vlmforge_version", "")))),
            ("phases", escape(", ".join(f"{k} {v.get('seconds', 0):.1f} s" for k, v in m["phases"].items()))),
        ]
        html += '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
        cfg = json.dumps(m.get("config", {}), indent=2)
        html += f"<details><summary>recipe (manifest config)</summary><pre>{escape(cfg)}</pre></details>"
        return html

    return Body(_per_run(runs, panel))


def _funnel(runs: list[Run], opts: Options) -> Body:
    x_max = max(r.input_rows for r in runs)
    reason_max = max((n for r in runs for s in r.manifest["stages"] for n in s["reasons"].values()),
                     default=1)

    def panel(run: Run) -> str:
        stages = run.manifest["stages"]
        svg = charts.stacked_bars(
            [s["stage"] for s in stages],
            [("kept after stage", [s["rows_out"] for s in stages], charts.KEPT),
             ("rejected by stage", [s["rejected"] for s in stages], charts.REJECTED)],
            label=f"funnel — {run.tag or run.path.name}", x_max=x_max,
            annotations=[f"{charts.fmt_num(s['rows_out'])} (−{charts.fmt_num(s['rejected'])})"
                         for s in stages],
        )
        rows = []
        for s in stages:
            reasons = sorted(s["reasons"].items(), key=lambda kv: -kv[1])
            chips = " ".join(
                f'<span class="chip">{escape(r)} <b>{_n(n)}</b></span>' for r, n in reasons
            )
            num = [_n(s[k]) for k in ("rows_in", "rows_out", "rejected")]
            pct = _pct(s["rejected"], run.input_rows)
            rows.append([f"<code>{escape(s['stage'])}</code>", *num, pct, chips or "–"])
        table = _table(["stage", "in", "out", "rejected", "% of input", "reasons"], rows, (1, 2, 3, 4))
        reasons = sorted(
            ((f"{s['stage']}/{r}", n) for s in stages for r, n in s["reasons"].items()), key=lambda kv: -kv[1]
        )[:20]
        bars = charts.bar_chart(
            [k for k, _ in reasons], [n for _, n in reasons], label=f"rejections by reason — {run.tag}",
            color=charts.REJECTED, x_max=reason_max,
            annotations=[f"{charts.fmt_num(n)} ({_pct(n, run.input_rows)})" for _, n in reasons],
        ) if reasons else "<p>nothing was rejected</p>"
        return (
            f'<div class="figs">{_figure(svg, "<b>Rows through each stage</b> (bar length: rows in)")}'
            f'{_figure(bars, "<b>Rejections by stage/reason</b>")}</div>{table}'
        )

    return Body(_per_run(runs, panel))


_LANG_LABEL = re.compile(r"(?:^|;\s*)([a-z]{2,3}):[0-9.]+")


def _languages(runs: list[Run], opts: Options) -> Body:
    hists, _ = _hist_panels(
        runs,
        [Hist("lang_score", "Language score of kept rows", "fastText probability of the kept language",
              bins=20, thresholds=_threshold("language.min_score", "min_score"), domain=(0, 1))],
        "language ID: language.enabled=true",
    )

    def panel(run: Run) -> str:
        col = run.values.get("lang")
        if run.kept_rows == 0:
            return '<p class="hint">no kept rows</p>'
        if col is None or col.null_count == len(col):
            return _absent("Language ID", "language.enabled=true")
        counts = sorted(
            ((d["values"], d["counts"]) for d in pc.value_counts(col.drop_null()).to_pylist()),
            key=lambda kv: -kv[1],
        )
        top = counts[:12]
        if len(counts) > 12:
            top.append(("other", sum(n for _, n in counts[12:])))
        figs = [_figure(charts.bar_chart(
            [k for k, _ in top], [n for _, n in top], label="kept languages", color=charts.KEPT,
            annotations=[f"{charts.fmt_num(n)} ({_pct(n, run.kept_rows)})" for _, n in top],
        ), "<b>Languages of kept rows</b>")]
        if run.rejected_langs:
            rl = list(run.rejected_langs.items())[:12]
            figs.append(_figure(charts.bar_chart(
                [k for k, _ in rl], [n for _, n in rl], label="rejected languages", color=charts.REJECTED,
            ), "<b>Rejected by language ID</b>: fastText's top label (from the rejection detail)"))
        return _figs(*figs, hists(run))

    computed = any(r.values.get("lang") is not None and r.values["lang"].null_count < len(r.values["lang"])
                   for r in runs)
    return Body(_per_run(runs, panel), computed)


def _captions(runs: list[Run], opts: Options) -> Body:
    hists, computed = _hist_panels(
        runs,
        [Hist("caption_chars", "Caption length", "characters", integer=True, bins=40),
         Hist("caption_words", "Caption word count", "words", integer=True, bins=40)],
        "a caption column",
    )
    return Body(_per_run(runs, lambda r: _figs(hists(r))), computed)


def _images(runs: list[Run], opts: Options) -> Body:
    def aspect(run: Run) -> list[tuple[float, str]]:
        m = run.config("image.max_aspect_ratio")
        return [(1 / float(m), "1/max"), (float(m), "max")] if m else []

    min_side = _threshold("image.min_side", "min_side")
    hists, computed = _hist_panels(
        runs,
        [Hist("width", "Image width", "pixels", integer=True, thresholds=min_side),
         Hist("height", "Image height", "pixels", integer=True, thresholds=min_side),
         Hist("aspect_ratio", "Aspect ratio", "width / height", thresholds=aspect, clip=1.0)],
        "image decode",
    )

    def formats(run: Run) -> str:
        col = run.values.get("image_format")
        if col is None or col.null_count == len(col):
            return ""
        counts = sorted(((d["values"], d["counts"]) for d in pc.value_counts(col.drop_null()).to_pylist()),
                        key=lambda kv: -kv[1])
        svg = charts.bar_chart([k for k, _ in counts], [n for _, n in counts], label="image formats")
        return _figure(svg, "<b>Stored image formats</b> (non-RGB and rare formats are re-encoded as JPEG)")

    return Body(_per_run(runs, lambda r: _figs(hists(r), formats(r))), computed)


STRIP_CLIPS, STRIP_FRAMES = 6, 8  # kept clips shown as frame strips, and frames shown per clip


def _frame_strips(run: Run) -> str:
    """A strip of sampled frames (with their times) for a few kept clips, picked by a stable id hash."""
    from vlmforge.pipeline.report.stats import kept_columns, kept_table
    from vlmforge.pipeline.report.thumbnails import make_thumbnail, sample_order

    if "frames" not in kept_columns(run.path, run.manifest):
        return ""
    ids = kept_table(run.path, run.manifest, ["id"], pc.is_valid(pc.field("frames")))["id"].to_pylist()
    chosen = [ids[i] for i in sample_order(ids)[:STRIP_CLIPS]]
    if not chosen:
        return ""
    columns = ["id", "caption", "frames", "frame_times"]
    rows = kept_table(run.path, run.manifest, columns, pc.field("id").isin(chosen)).to_pylist()
    strips = []
    for r in sorted(rows, key=lambda r: chosen.index(r["id"])):
        frames = list(zip(r["frames"], r["frame_times"], strict=True))
        step = max(1, -(-len(frames) // STRIP_FRAMES))
        cells = []
        for data, t in frames[::step]:
            thumb = make_thumbnail(data)
            img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}" alt="{t:.1f} s">'
                   if thumb else "")
            cells.append(f'<div class="thumb">{img}<div class="meta">{t:.1f} s</div></div>')
        strips.append(
            f'<div class="strip"><div class="cap">{escape((r["caption"] or "")[:200])}</div>'
            f'<div class="figs">{"".join(cells)}</div><div class="meta"><code>{escape(r["id"])}</code>'
            f" · {len(frames)} frames</div></div>"
        )
    hint = (f'<p class="hint">{len(strips)} kept clips chosen by a stable hash of their id (the same ids in '
            f"every run), each with up to {STRIP_FRAMES} of its sampled frames and their times.</p>")
    return hint + "".join(strips)


def _video(runs: list[Run], opts: Options) -> Body:
    hists, computed = _hist_panels(
        runs,
        [Hist("duration_s", "Clip duration", "seconds", thresholds=_threshold("video.min_duration_s", "min")),
         Hist("fps", "Frame rate", "frames per second")],
        "video: (configs/curate/video.yaml)",
    )
    return Body(_per_run(runs, lambda r: _figs(hists(r)) + _frame_strips(r)), computed)


def score_section(
    sid: str, title: str, measure: str, threshold_key: str, enable: str, x_label: str
) -> Section:
    """A section holding one score histogram with the recipe's threshold drawn (quality, alignment, ...)."""

    def render(runs: list[Run], opts: Options) -> Body:
        hists, computed = _hist_panels(
            runs, [Hist(measure, title, x_label, bins=25, thresholds=_threshold(threshold_key, "threshold"),
                        clip=1.0)], enable,
        )
        return Body(_per_run(runs, lambda r: _figs(hists(r))), computed)

    return Section(sid, title, render, (measure,))


NEAR_DEDUP_HINT = "near_dedup in the recipe"
OCR_HINT = "ocr in the recipe"
_CLUSTER_BUCKETS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, None)]


def _duplicates(runs: list[Run], opts: Options) -> Body:
    def panel(run: Run) -> str:
        rows = [
            [f"<code>{escape(s['stage'])}</code>", _n(s["rows_in"]), _n(s["rejected"]),
             _pct(s["rejected"], s["rows_in"]),
             ", ".join(f"{escape(r)} {_n(n)}" for r, n in s["reasons"].items()) or "–"]
            for s in _dedup_stages(run)
        ]
        header = ["dedup stage", "in", "removed", "% removed", "by reason"]
        html = _table(header, rows, (1, 2, 3)) if rows else _absent("Duplicate removal", "exact_dedup")
        sizes = run.floats("dup_cluster_size")
        if sizes is None:
            return html + _absent("Near-duplicate cluster sizes (dup_cluster_size)", NEAR_DEDUP_HINT)
        labels, counts = [], []
        for lo, hi in _CLUSTER_BUCKETS:
            sel = (sizes >= lo) & (sizes <= hi) if hi is not None else sizes >= lo
            labels.append(str(lo) if lo == hi else f"{lo}–{hi}" if hi else f"≥{lo}")
            counts.append(int(sel.sum()))
        while len(counts) > 2 and counts[-1] == 0:
            labels.pop(), counts.pop()
        removed = int(np.maximum(sizes - 1, 0).sum())
        svg = charts.bar_chart(labels, counts, label="duplicate cluster sizes",
                               annotations=[f"{charts.fmt_num(c)} ({_pct(c, sizes.size)})" for c in counts])
        cap = (f"<b>Duplicate cluster size</b> of each kept row (1 = unique) · {_n(removed)} near "
               "duplicates were dropped in favour of these rows")
        return html + f'<div class="figs">{_figure(svg, cap)}</div>'

    computed = any(r.floats("dup_cluster_size") is not None or _dedup_stages(r) for r in runs)
    return Body(_per_run(runs, panel), computed)


def _dedup_stages(run: Run) -> list[dict]:
    return [s for s in run.manifest["stages"] if "dedup" in s["stage"] and s["stage"] != "dedup_keys"]


def _ocr(runs: list[Run], opts: Options) -> Body:
    computed = [r for r in runs if r.floats("ocr_chars") is not None or r.config("ocr.enabled") is True]
    hists, _ = _hist_panels(
        runs, [Hist("ocr_chars", "OCR text length", "characters of OCR text", integer=True)], OCR_HINT
    )

    def panel(run: Run) -> str:
        if run not in computed:
            return _absent("OCR text (ocr_text)", OCR_HINT)
        v = run.floats("ocr_chars")
        with_text = int((v > 0).sum()) if v is not None else 0
        of = f"{_n(with_text)} of {_n(run.kept_rows)} kept"
        return _cards([("rows with OCR text", _pct(with_text, run.kept_rows), of)]) + _figs(hists(run))

    return Body(_per_run(runs, panel), bool(computed))


DIVERSITY_HINT = "diversity resampling in the recipe"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _has_diversity(run: Run) -> bool:
    d = run.manifest.get("diversity")
    return isinstance(d, dict) and isinstance(d.get("before"), dict) and isinstance(d.get("after"), dict)


def _diversity(runs: list[Run], opts: Options) -> Body:
    hists, keep_computed = _hist_panels(
        runs, [Hist("diversity_keep_prob", "Diversity keep probability", "keep probability", bins=20,
                    domain=(0, 1))], DIVERSITY_HINT,
    )

    def panel(run: Run) -> str:
        d = run.manifest.get("diversity")
        keep = _figs(hists(run)) if run.floats("diversity_keep_prob") is not None else ""
        if not _has_diversity(run):
            return _absent("Diversity effect (n-gram statistics before/after)", DIVERSITY_HINT) + keep
        before, after = d["before"], d["after"]
        keys = [k for k in before if _is_num(before[k]) and _is_num(after.get(k))]
        keys.sort(key=lambda k: (k not in ("top_ngram_share", "entropy"), k))
        rows = [[f"<code>{escape(k)}</code>", charts.fmt_num(before[k]), charts.fmt_num(after[k]),
                 f"{after[k] - before[k]:+.4g}"] for k in keys]
        html = _table(["metric", "before", "after", "change"], rows, (1, 2, 3))
        figs = []
        top = {side: [(str(g), float(s)) for g, s in (d.get("top_ngrams") or {}).get(side) or []][:12]
               for side in ("before", "after")}
        x_max = max((s for items in top.values() for _, s in items), default=None)
        for side, items in top.items():
            if items:
                figs.append(_figure(charts.bar_chart(
                    [g for g, _ in items], [s for _, s in items], label=f"top n-grams {side}", x_max=x_max,
                    annotations=[f"{100 * s:.2f}%" for _, s in items],
                ), f"<b>Top n-grams {side}</b> (share of captions)"))
        return html + _figs(*figs) + keep

    return Body(_per_run(runs, panel), keep_computed or any(_has_diversity(r) for r in runs))


def _thumb(e: Example, alt: str) -> str:
    if e.thumbnail:
        uri = "data:image/jpeg;base64," + base64.b64encode(e.thumbnail).decode()
        return f'<div class="thumb"><img src="{uri}" alt="{escape(alt)}" loading="eager"></div>'
    return '<div class="thumb none"><span>no thumbnail<br>(image not decodable or not sampled)</span></div>'


def _card(e: Example, kind: str) -> str:
    cap = e.caption if e.caption else "(empty caption)"
    cls = "cap" if e.caption else "cap empty"
    note = f'<div class="note {e.note_tone}">{escape(e.note[:200])}</div>' if e.note else ""
    meta = " · ".join(escape(m) for m in e.meta)
    return (
        f'<div class="ex {kind}">{_thumb(e, e.caption or e.id)}<div class="{cls}" title="{escape(cap)}">'
        f'{escape(cap[:240])}</div>{note}<div class="meta"><code>{escape(e.id)}</code>'
        f'{" · " + meta if meta else ""}</div></div>'
    )


def _gallery_kept(runs: list[Run], opts: Options) -> Body:
    def panel(run: Run) -> str:
        if not run.kept:
            return "<p>no kept rows</p>"
        return (f'<p class="hint">{len(run.kept)} kept pairs chosen by a stable hash of their id (the same '
                f'ids in every run); only these images were decoded.</p>'
                f'<div class="gallery">{"".join(_card(e, "kept") for e in run.kept)}</div>')

    return Body(_per_run(runs, panel))


def _gallery_rejected(runs: list[Run], opts: Options) -> Body:
    def panel(run: Run) -> str:
        parts = []
        for s in run.manifest["stages"]:
            for reason, n in sorted(s["reasons"].items(), key=lambda kv: -kv[1]):
                key = f"{s['stage']}/{reason}"
                examples = run.rejected.get(key, [])
                cards = "".join(_card(e, "rejected") for e in examples) or "<p>no rows found in rejected/</p>"
                count = f"{_n(n)} rows · {_pct(n, run.input_rows)} of input"
                parts.append(
                    f'<div class="reason" id="{escape(_slug(run.tag + "-" + key))}">'
                    f'<h3><code>{escape(key)}</code> <span class="count">{count}</span></h3>'
                    f'<div class="gallery">{cards}</div></div>'
                )
        return "".join(parts) or "<p>nothing was rejected</p>"

    return Body(_per_run(runs, panel))


def _slug(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", s).strip("-").lower()


def _compare(runs: list[Run], opts: Options) -> Body:
    a, b = runs
    ids_a, ids_b = a.index.ids.combine_chunks(), b.index.ids.combine_chunks()
    in_b = pc.is_in(ids_a, value_set=ids_b).to_numpy(zero_copy_only=False)
    in_a = pc.is_in(ids_b, value_set=ids_a).to_numpy(zero_copy_only=False)
    both, only_a, only_b = int(in_b.sum()), int((~in_b).sum()), int((~in_a).sum())
    union = both + only_a + only_b
    rows = [[escape(k), _n(v)] for k, v in (
        ("kept by both", both), (f"kept only by {a.tag}", only_a), (f"kept only by {b.tag}", only_b))]
    rows.append(["Jaccard similarity of kept ids", f"{both / union:.4f}" if union else "–"])
    html = _table(["kept ids", "rows"], rows, (1,))
    changed = config_diff(a.manifest, b.manifest)
    html += "<h3>Config differences</h3>" + (
        _table(["key", escape(a.tag), escape(b.tag), "first phase it changes"],
               [[f"<code>{escape(c['key'])}</code>", escape(json.dumps(c["a"])), escape(json.dumps(c["b"])),
                 escape(c["phase"] or "–")] for c in changed])
        if changed else "<p>none: the two runs used the same recipe</p>"
    )
    parts = []
    for this, other, mask, n in ((a, b, ~in_b, only_a), (b, a, ~in_a, only_b)):
        title = f"Kept only by {this.tag} ({_n(n)})"
        if not n:
            parts.append(f'<div class="run"><h3>{escape(title)}</h3><p>none</p></div>')
            continue
        ids = this.index.ids.combine_chunks().filter(pa.array(mask))
        reasons = rejected_reasons(other.path, other.manifest, ids)
        counts = Counter(r.split(":", 1)[0] for r in reasons.values())
        missing = n - sum(counts.values())
        items = counts.most_common(10) + ([(f"not in {other.tag}'s input", missing)] if missing else [])
        svg = charts.bar_chart([k for k, _ in items], [v for _, v in items],
                               label=f"what {other.tag} did with them", color=charts.REJECTED)
        examples = kept_examples(this.index, opts.diff_examples, mask)
        for e in examples:
            e.note, e.note_tone = f"{other.tag}: {reasons.get(e.id, 'not in its input')}", "warn"
        parts.append(
            f'<div class="run"><h3>{escape(title)}</h3>'
            f'{_figure(svg, f"<b>How run {escape(other.tag)} rejected them</b> (stage/reason)")}'
            f'<div class="gallery">{"".join(_card(e, "kept") for e in examples)}</div></div>'
        )
    return Body(html + f'<div class="compare">{"".join(parts)}</div>')


EVAL_HINT = "a proxy evaluation: vlmforge eval-curation DIR --eval-set EVAL_DIR --budget N"


def _eval_curation(runs: list[Run], opts: Options) -> Body:
    """The `vlmforge eval-curation` results of the runs that have one, in one table (with the difference
    of means when two runs compare), and the per-seed figures."""
    from vlmforge.training.eval_results import METRICS, describe, differences, load_result, table

    loaded = [(r, load_result(r.path)) for r in runs]
    found = [(r, res) for r, res in loaded if res is not None]
    missing = "".join(_absent(f"Proxy evaluation of {r.tag or r.path.name}", EVAL_HINT)
                      for r, res in loaded if res is None)
    if not found:
        return Body(missing, computed=False)
    results = [(f"{r.tag} {r.path.name}".strip(), res) for r, res in found]
    header, rows = table(results)
    html = _table([escape(h) for h in header], [[escape(c) for c in row] for row in rows],
                  tuple(range(1, len(header))))
    html += f'<p class="hint">mean ± sample sd over seeds · {escape(describe(results[0][1]))}</p>'
    for name, res in results[1:]:
        if diff := differences(results[0][1], res):
            html += (f'<p class="absent">{escape(name)} was evaluated differently '
                     f'({escape(", ".join(diff))}): its figures do not compare</p>')
    keys = [k for k in METRICS if k in results[0][1]["summary"]]
    seed_rows = [[escape(name), str(s["seed"]), *[f"{s['metrics'][k]:.3f}" if k in s["metrics"] else "–"
                                                  for k in keys], f"{s['final_train_loss']:.3f}"]
                 for name, res in results for s in res["seeds"]]
    seeds = _table(["run", "seed", *[escape(METRICS[k]) for k in keys], "final train loss"], seed_rows,
                   tuple(range(1, len(keys) + 3)))
    return Body(html + missing + f"<details><summary>per seed</summary>{seeds}</details>")


# The report, in order. Later phases add their sections here.
SECTIONS: list[Section] = [
    Section("overview", "Overview", _overview),
    Section("compare", "Kept-id difference", _compare, compare_only=True),
    Section("eval-curation", "Proxy evaluation: a small CLIP trained on the set", _eval_curation),
    Section("funnel", "Funnel: rows in and out of each stage", _funnel),
    Section("languages", "Languages", _languages, ("lang", "lang_score")),
    Section("captions", "Captions", _captions, ("caption_chars", "caption_words")),
    Section("images", "Image sizes", _images, ("width", "height", "aspect_ratio", "image_format")),
    Section("video", "Video clips", _video, ("duration_s", "fps")),
    score_section("quality", "Quality score", "quality_score", "quality.min_score",
                  "quality scoring in the recipe", "quality score"),
    score_section("alignment", "Image–text alignment", "clip_score", "alignment.min_score",
                  "alignment scoring (phase 3) in the recipe", "alignment score (e.g. CLIP cosine)"),
    Section("duplicates", "Duplicates", _duplicates, ("dup_cluster_size",)),
    Section("ocr", "OCR coverage", _ocr, ("ocr_chars",)),
    Section("diversity", "Diversity effect", _diversity, ("diversity_keep_prob",)),
    Section("gallery-kept", "Gallery: kept pairs", _gallery_kept),
    Section("gallery-rejected", "Gallery: rejected pairs by reason", _gallery_rejected),
]


def section_ids(compare: bool = False) -> list[str]:
    """The ids of the sections a report holds (every one is rendered, with data or with an 'absent' note)."""
    return [s.id for s in SECTIONS if compare or not s.compare_only]


# ------------------------------------------------------------------------------------------------ build


def _rejected_languages(out: Path, manifest: dict) -> dict[str, int]:
    if not any(s["stage"] == "language" and s["rejected"] for s in manifest["stages"]):
        return {}
    t = rejected_table(out, manifest, ["detail"], pc.field("stage") == "language")
    labels = Counter()
    for d in t["detail"].to_pylist():
        m = _LANG_LABEL.search(d or "")
        labels[m.group(1) if m else "unknown"] += 1
    return dict(labels.most_common())


def load_run(path: str | Path, tag: str, opts: Options) -> Run:
    """Read one output: manifest, the measures' columns, the kept-id index and the gallery samples."""
    out = location(path)
    manifest = load_manifest(out)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    wanted = {m for s in SECTIONS for m in s.measures}
    values = scan_measures(out, manifest, {k: v for k, v in MEASURES.items() if k in wanted})
    seconds["columns"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = KeptIndex.read(out, manifest)
    kept = kept_examples(index, opts.kept_examples)
    seconds["kept_gallery"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rejected = rejected_examples(out, manifest, opts.rejected_per_reason)
    rejected_langs = _rejected_languages(out, manifest)
    seconds["rejected_gallery"] = time.perf_counter() - t0
    return Run(tag, out, manifest, values, index, kept, rejected, rejected_langs, seconds)


CSS = (Path(__file__).parent / "report.css").read_text(encoding="utf-8")

# No script, no network: only inline styles and data: images may load.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(runs: list[Run], opts: Options) -> str:
    """The whole report as one HTML string."""
    compare = len(runs) > 1
    blocks, nav = [], []
    for s in SECTIONS:
        if s.compare_only and not compare:
            continue
        body = s.render(runs, opts)
        status = "computed" if body.computed else "not-computed"
        note = "" if body.computed else '<span class="status">not computed in this run</span>'
        blocks.append(
            f'<section id="{s.id}" data-status="{status}"><h2>{escape(s.title)}{note}</h2>'
            f"{body.html}</section>"
        )
        nav.append(f'<a href="#{s.id}"{"" if body.computed else " class=off"}>{escape(s.title)}</a>')
    title = "vlmforge report — " + (" vs ".join(f"{r.tag} {r.path.name}" for r in runs) if compare
                                     else runs[0].path.name)
    sub = " · ".join(escape(str(r.path)) for r in runs)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><div class=\"sub\">{sub}</div></header>"
        f"<nav>{''.join(nav)}</nav><main>{''.join(blocks)}</main>"
        f"<footer>vlmforge {escape(__version__)} · generated {now} from manifest.json and "
        f"Parquet column reads</footer></body></html>"
    )


def write_report(dirs: list[str | Path], html_path: str | Path, opts: Options | None = None) -> dict:
    """Read one or two outputs and write the report; returns the timing of each step in seconds."""
    opts = opts or Options()
    t0 = time.perf_counter()
    tags = ["A", "B"] if len(dirs) > 1 else [""]
    runs = [load_run(d, tag, opts) for d, tag in zip(dirs, tags, strict=False)]
    t_read = time.perf_counter() - t0
    html = render_html(runs, opts)
    html = html.replace("</footer>", f" in {time.perf_counter() - t0:.1f} s</footer>", 1)
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return {"read_s": round(t_read, 3), "total_s": round(time.perf_counter() - t0, 3), "bytes": len(html),
            "runs": [{"path": str(r.path), **{k: round(v, 3) for k, v in r.seconds.items()}} for r in runs]}
