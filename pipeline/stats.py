"""`vlmforge stats`: the funnel, languages, caption lengths and image sizes of a curated output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.writer import read_json

SUMMARY_COLUMNS = ["lang", "caption_words", "width", "height"]


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    q = np.percentile(values, [5, 50, 95])
    return {
        "count": int(values.size),
        "min": float(values.min()),
        "p5": float(q[0]),
        "median": float(q[1]),
        "p95": float(q[2]),
        "max": float(values.max()),
        "mean": round(float(values.mean()), 3),
    }


def compute_stats(out_dir: str | Path) -> dict:
    """Stats from manifest.json and column reads of the data shards (no image is decoded)."""
    out = Path(out_dir)
    manifest = read_json(out / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{out} has no manifest.json: is it a finished `vlmforge curate` output?")
    files = [str(out / f) for f in manifest["files"]["data"]]
    table = pads.dataset(files, format="parquet").to_table(columns=SUMMARY_COLUMNS) if files else None
    langs: dict[str, int] = {}
    words = widths = heights = np.array([])
    if table is not None and table.num_rows:
        counts = pc.value_counts(table["lang"]).to_pylist()
        langs = {d["values"]: d["counts"] for d in sorted(counts, key=lambda d: -d["counts"])}
        words = table["caption_words"].to_numpy(zero_copy_only=False)
        widths = table["width"].to_numpy(zero_copy_only=False)
        heights = table["height"].to_numpy(zero_copy_only=False)
    reasons: dict[str, int] = {}
    for s in manifest["stages"]:
        for r, n in s["reasons"].items():
            reasons[f"{s['stage']}/{r}"] = n
    return {
        "output": str(out),
        "totals": manifest["totals"],
        "funnel": [
            {k: s[k] for k in ("stage", "rows_in", "rows_out", "rejected", "reasons")}
            for s in manifest["stages"]
        ],
        "top_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "languages": langs,
        "caption_words": _summary(words),
        "width": _summary(widths),
        "height": _summary(heights),
        "aspect_ratio": _summary(widths / heights if heights.size else heights),
        "phases": manifest["phases"],
    }


def print_stats(stats: dict) -> None:
    """Render `compute_stats` output as terminal tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = stats["totals"]
    kept_pct = 100 * t["output_rows"] / max(t["input_rows"], 1)
    console.print(
        f"[bold]{stats['output']}[/]: {t['input_rows']} in, {t['output_rows']} kept "
        f"({kept_pct:.1f}%), {t['rejected_rows']} rejected"
    )
    funnel = Table(title="Funnel")
    for col in ("stage", "in", "out", "rejected", "top reasons"):
        funnel.add_column(col, justify="left" if col in ("stage", "top reasons") else "right")
    for s in stats["funnel"]:
        top = ", ".join(f"{r} {n}" for r, n in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4])
        funnel.add_row(s["stage"], str(s["rows_in"]), str(s["rows_out"]), str(s["rejected"]), top)
    console.print(funnel)
    langs = Table(title="Languages (kept)")
    langs.add_column("lang")
    langs.add_column("rows", justify="right")
    for lang, n in list(stats["languages"].items())[:10]:
        langs.add_row(str(lang), str(n))
    console.print(langs)
    dist = Table(title="Distributions (kept)")
    for col in ("measure", "min", "p5", "median", "p95", "max", "mean"):
        dist.add_column(col, justify="left" if col == "measure" else "right")
    for key in ("caption_words", "width", "height", "aspect_ratio"):
        d = stats[key]
        if d.get("count"):
            dist.add_row(key, *(f"{d[k]:.4g}" for k in ("min", "p5", "median", "p95", "max", "mean")))
    console.print(dist)
    phases = ", ".join(f"{name} {p['seconds']:.1f}s" for name, p in stats["phases"].items())
    console.print(f"wall time per phase: {phases}")
