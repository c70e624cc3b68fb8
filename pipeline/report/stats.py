"""`vlmforge stats`: the funnel, languages, caption lengths and image sizes of a curated output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import read_json
from vlmforge.common.storage import location, parquet_dataset, parquet_file, read_parquet_schema
from vlmforge.pipeline.schema import REJECTED_SCHEMA

SUMMARY_COLUMNS = ["lang", "caption_words", "width", "height"]
VIDEO_COLUMNS = ["duration_s", "fps"]  # video outputs only (image rows leave them null)

# A per-row measure of the kept rows: the columns it reads and how a batch of them becomes one array.
Measure = tuple[tuple[str, ...], Callable[[pa.RecordBatch], pa.Array]]


class Tally:
    """Exact counts of a measure's values, added batch by batch: its quantiles and histogram without
    keeping the rows (memory grows with distinct values, not rows)."""

    def __init__(self) -> None:
        self.values, self.counts = np.array([]), np.array([], dtype=np.int64)
        self._compacted = 0

    def add(self, values: np.ndarray) -> None:
        """Count `values` (floats; NaN, a null, is not counted)."""
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        u, c = np.unique(values, return_counts=True)
        self.values, self.counts = np.concatenate([self.values, u]), np.concatenate([self.counts, c])
        if self.values.size > 2 * self._compacted + 65_536:
            self._compact()

    def _compact(self) -> None:
        u, inverse = np.unique(self.values, return_inverse=True)
        self.values, self.counts = u, np.bincount(inverse, weights=self.counts).astype(np.int64)
        self._compacted = u.size

    def summary(self) -> dict:
        """count, min, p5, median, p95, max, mean: np.percentile's (linear) figures over the rows."""
        self._compact()
        n = int(self.counts.sum())
        if n == 0:
            return {"count": 0}
        ends = np.cumsum(self.counts)

        def at(k: int) -> float:  # the k-th smallest row's value
            return float(self.values[np.searchsorted(ends, k, side="right")])

        def percentile(q: float) -> float:
            h = (n - 1) * q / 100
            lo = int(np.floor(h))
            return at(lo) if h == lo else at(lo) + (h - lo) * (at(lo + 1) - at(lo))

        return {
            "count": n,
            "min": float(self.values[0]),
            "p5": percentile(5),
            "median": percentile(50),
            "p95": percentile(95),
            "max": float(self.values[-1]),
            "mean": round(float((self.values * self.counts).sum() / n), 3),
        }

    def histogram(self, bins: int = 10) -> list[dict]:
        """Counts in `bins` equal bins: [{"lo", "hi", "count"}] (empty without values)."""
        self._compact()
        if self.values.size == 0:
            return []
        counts, edges = np.histogram(self.values, bins=bins, weights=self.counts)
        return [
            {"lo": round(float(lo), 3), "hi": round(float(hi), 3), "count": int(n)}
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ]


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest of a finished `vlmforge curate` output; FileNotFoundError when there is none."""
    out = location(out_dir)
    manifest = read_json(out / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{out} has no manifest.json: is it a finished `vlmforge curate` output?")
    return manifest


def read_shards(
    out_dir: str | Path, names: list[str], columns: list[str], filter: pc.Expression | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table | None:
    """`columns` of the rows of the listed shards (that pass `filter`), one shard open at a time (a dataset
    over all of them would keep every shard's footer in memory); None when there are no shards."""
    tables = [
        parquet_dataset([location(out_dir) / name], schema).to_table(columns=columns, filter=filter)
        for name in names
    ]
    return pa.concat_tables(tables) if tables else None


def kept_table(
    out_dir: str | Path, manifest: dict, columns: list[str], filter: pc.Expression | None = None
) -> pa.Table | None:
    """The kept rows' `columns` (None when there are no shards)."""
    return read_shards(out_dir, manifest["files"]["data"], columns, filter)


def rejected_table(
    out_dir: str | Path, manifest: dict, columns: list[str], filter: pc.Expression | None = None
) -> pa.Table | None:
    """The rejected rows' `columns`, read as REJECTED_SCHEMA (columns older runs lack read as nulls)."""
    return read_shards(out_dir, manifest["files"].get("rejected", []), columns, filter, REJECTED_SCHEMA)


def kept_batches(
    out_dir: str | Path, manifest: dict, columns: list[str], batch_rows: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """The kept rows' `columns` (those the shards have), one shard open at a time: a dataset over all
    shards keeps every shard's Parquet footer in memory, O(files) in the driver (75 KB each measured)."""
    for name in manifest["files"]["data"]:
        shard = parquet_file(location(out_dir) / name)
        try:
            have = [c for c in columns if c in shard.schema_arrow.names]
            if have:
                yield from shard.iter_batches(batch_size=batch_rows, columns=have)
        finally:
            shard.close()


def kept_columns(out_dir: str | Path, manifest: dict) -> set[str]:
    """The columns of the kept rows' shards (all share one schema), empty when there are none."""
    files = manifest["files"]["data"]
    if not files:
        return set()
    return set(read_parquet_schema(location(out_dir) / files[0]).names)


def scan_measures(
    out_dir: str | Path, manifest: dict, measures: dict[str, Measure], batch_rows: int = 65_536
) -> dict[str, pa.ChunkedArray]:
    """Evaluate `measures` over the kept rows batch by batch, reading only the columns they need.

    A measure whose columns the shards do not have is left out of the result.
    """
    names = kept_columns(out_dir, manifest)
    usable = {k: m for k, m in measures.items() if set(m[0]) <= names}
    chunks: dict[str, list[pa.Array]] = {k: [] for k in usable}
    columns = sorted({c for cols, _ in usable.values() for c in cols})
    if columns:
        for batch in kept_batches(out_dir, manifest, columns, batch_rows):
            for k, (_, fn) in usable.items():
                chunks[k].append(fn(batch))
    return {
        k: pa.chunked_array(v) if v else pa.chunked_array([], pa.float64()) for k, v in chunks.items()
    }


def kept_ids(out_dir: str | Path, manifest: dict) -> pa.Array:
    """The ids of the kept rows (one column read)."""
    ids = [batch.column(0) for batch in kept_batches(out_dir, manifest, ["id"])]
    return pa.chunked_array(ids, pa.string()).combine_chunks()


def compare_kept_ids(dir_a: str | Path, dir_b: str | Path) -> dict:
    """How many kept ids two outputs share, and how many only one of them kept."""
    a, b = (kept_ids(d, load_manifest(d)) for d in (dir_a, dir_b))
    both = int(pc.sum(pc.is_in(a, value_set=b)).as_py() or 0)
    return {"both": both, "only_a": len(a) - both, "only_b": len(b) - both}


def config_diff(manifest_a: dict, manifest_b: dict) -> list[dict]:
    """The config keys two runs set differently (paths and Ray settings left out), with the phase whose
    fingerprint each changes."""
    from vlmforge.pipeline.cache.layout import flatten
    from vlmforge.pipeline.registry import PHASES

    a, b = (flatten(m["config"]) for m in (manifest_a, manifest_b))
    ignore = ("input.path", "output.path", "output.cache", "ray.")
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key.startswith(ignore) or a.get(key) == b.get(key):
            continue
        phase = next(
            (p.name for p in PHASES if any(key == k or key.startswith(k + ".") for k in p.reads)),
            None,
        )
        out.append({"key": key, "a": a.get(key), "b": b.get(key), "phase": phase})
    return out


def top_reasons(manifest: dict) -> dict[str, int]:
    """Rejected rows by `stage/reason`, most first."""
    reasons = {f"{s['stage']}/{r}": n for s in manifest["stages"] for r, n in s["reasons"].items()}
    return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))


def source_counts(out_dirs: list[str | Path]) -> dict:
    """Per output (one per source of a training mix: curation runs per input), its rows in, kept and
    rejected and its top reasons, from the manifests alone; and the totals over all of them."""
    sources = []
    for out_dir in out_dirs:
        manifest = load_manifest(out_dir)
        t = manifest["totals"]
        sources.append({
            "source": str(out_dir),
            "input_rows": t["input_rows"],
            "output_rows": t["output_rows"],
            "rejected_rows": t["rejected_rows"],
            "top_reasons": top_reasons(manifest),
        })  # fmt: skip
    keys = ("input_rows", "output_rows", "rejected_rows")
    total = {k: sum(s[k] for s in sources) for k in keys}
    for s in sources:
        s["kept_share"] = round(s["output_rows"] / max(total["output_rows"], 1), 4)
    return {"sources": sources, "total": total}


def print_source_counts(counts: dict) -> None:
    """Render `source_counts` as one terminal table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Sources")
    for col in ("source", "in", "kept", "kept %", "share of kept", "rejected", "top reasons"):
        table.add_column(col, justify="left" if col in ("source", "top reasons") else "right")

    def row(name: str, c: dict, share: str, top: str) -> None:
        kept = f"{100 * c['output_rows'] / max(c['input_rows'], 1):.1f}"
        counts_in_row = (str(c[k]) for k in ("input_rows", "output_rows"))
        table.add_row(name, *counts_in_row, kept, share, str(c["rejected_rows"]), top)

    for s in counts["sources"]:
        top = ", ".join(f"{r} {n}" for r, n in list(s["top_reasons"].items())[:3])
        row(s["source"], s, f"{100 * s['kept_share']:.1f}", top)
    row("total", counts["total"], "100.0", "")
    Console().print(table)


def compute_stats(out_dir: str | Path) -> dict:
    """Stats from manifest.json and column reads of the data shards (no image is decoded)."""
    out = location(out_dir)
    manifest = load_manifest(out)
    langs: Counter = Counter()
    words, widths, heights, ratios = Tally(), Tally(), Tally(), Tally()
    clips = {c: Tally() for c in VIDEO_COLUMNS}
    for batch in kept_batches(out, manifest, SUMMARY_COLUMNS + VIDEO_COLUMNS):
        table = pa.Table.from_batches([batch])
        langs.update({d["values"]: d["counts"] for d in pc.value_counts(table["lang"]).to_pylist()})
        w = table["width"].to_numpy(zero_copy_only=False).astype(np.float64)
        h = table["height"].to_numpy(zero_copy_only=False).astype(np.float64)
        words.add(table["caption_words"].to_numpy(zero_copy_only=False).astype(np.float64))
        widths.add(w)
        heights.add(h)
        ratios.add(w / h)
        for c in VIDEO_COLUMNS:
            if c in table.column_names:
                clips[c].add(table[c].drop_null().to_numpy(zero_copy_only=False).astype(np.float64))
    return {
        "output": str(out),
        "totals": manifest["totals"],
        "funnel": [
            {k: s[k] for k in ("stage", "rows_in", "rows_out", "rejected", "reasons")}
            for s in manifest["stages"]
        ],
        "top_reasons": top_reasons(manifest),
        "languages": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
        "caption_words": words.summary(),
        "width": widths.summary(),
        "height": heights.summary(),
        "aspect_ratio": ratios.summary(),
        "duration_s": clips["duration_s"].summary(),
        "fps": clips["fps"].summary(),
        "duration_histogram": clips["duration_s"].histogram(),
        "phases": manifest["phases"],
        "eval_curation": eval_curation_result(out),
    }


def eval_curation_result(out_dir: str | Path) -> dict | None:
    """The output's latest `vlmforge eval-curation` result (DIR/eval_curation.json), or None."""
    from vlmforge.training.eval_results import load_result

    return load_result(out_dir)


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
    for key in ("caption_words", "width", "height", "aspect_ratio", "duration_s", "fps"):
        d = stats[key]
        if d.get("count"):
            dist.add_row(key, *(f"{d[k]:.4g}" for k in ("min", "p5", "median", "p95", "max", "mean")))
    console.print(dist)
    if stats["duration_histogram"]:
        hist = Table(title="Clip durations (kept)")
        for col in ("seconds", "clips", ""):
            hist.add_column(col, justify="right" if col == "clips" else "left")
        peak = max(b["count"] for b in stats["duration_histogram"]) or 1
        for b in stats["duration_histogram"]:
            bar = "#" * round(30 * b["count"] / peak)
            hist.add_row(f"{b['lo']:.4g}-{b['hi']:.4g}", str(b["count"]), bar)
        console.print(hist)
    phases = ", ".join(f"{name} {p['seconds']:.1f}s" for name, p in stats["phases"].items())
    console.print(f"wall time per phase: {phases}")
