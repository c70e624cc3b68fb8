"""Defaults and results of `vlmforge eval-curation`: the per-run JSON (``RUN/eval_curation.json``), its
summary over seeds, whether two results can be compared, and the results table (terminal and HTML share
its cells).

Kept free of torch so `vlmforge stats` and the report import it cheaply.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from vlmforge.common.files import read_json
from vlmforge.common.storage import location

RESULT_FILE = "eval_curation.json"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "clip.yaml"
# Zero-shot prompts in the words of the sample captions ('an image of a small red star ...').
DEFAULT_PROMPTS = (
    "{a} {label}", "an image of {a} {label}", "a picture of {a} {label}", "a drawing of {a} {label}",
)
# metric key -> column title
METRICS: dict[str, str] = {
    "i2t_r1": "image→text R@1",
    "i2t_r5": "image→text R@5",
    "t2i_r1": "text→image R@1",
    "t2i_r5": "text→image R@5",
    "zero_shot": "zero-shot acc",
}
TABLE_WIDTH = 120  # the terminal table is not squeezed below this (pipes and logs default to 80 columns)
# Settings two results must share to be compared: (section, key).
SAME: tuple[tuple[str, str], ...] = (
    ("eval_set", "fingerprint"),
    ("settings", "config_hash"),
    ("settings", "tokenizer_hash"),
    ("settings", "samples_seen"),
    ("settings", "pool"),
    ("settings", "prompts"),
    ("settings", "seeds"),
)


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max over seeds of every metric present in all of them."""
    out = {}
    for key in METRICS:
        values = [m[key] for m in per_seed if key in m]
        if values and len(values) == len(per_seed):
            out[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return out


def result_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULT_FILE


def load_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The latest eval-curation result of a curated output (local or in an object store), or None when it
    was not evaluated."""
    return read_json(location(run_dir) / RESULT_FILE)


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The settings in which two results differ (empty: their figures compare)."""
    return [f"{section}.{key}" for section, key in SAME if a[section].get(key) != b[section].get(key)]


def cell(stats: dict[str, float] | None) -> str:
    """'0.412 ± 0.012' (mean ± sample sd over seeds), or '–'."""
    if stats is None:
        return "–"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def table(results: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (name, result), then the difference of means of each later run to the
    first; plus the chance level of each metric."""
    keys = [k for k in METRICS if any(k in r["summary"] for _, r in results)]
    header = ["run", "rows", *[METRICS[k] for k in keys]]
    rows = [[name, f"{r['train_rows']:,}", *[cell(r["summary"].get(k)) for k in keys]] for name, r in results]
    first_name, first = results[0]
    for name, r in results[1:]:
        deltas = []
        for k in keys:
            if k in r["summary"] and k in first["summary"]:
                deltas.append(f"{r['summary'][k]['mean'] - first['summary'][k]['mean']:+.3f}")
            else:
                deltas.append("–")
        rows.append([f"{name} − {first_name}", "", *deltas])
    chance = first["settings"].get("chance", {})
    rows.append(["chance", "", *[f"{chance[k]:.3f}" if k in chance else "–" for k in keys]])
    return header, rows


def describe(result: dict[str, Any]) -> str:
    """One line: budget, seeds, eval set and pool, so a table says what it measured."""
    s, e = result["settings"], result["eval_set"]
    classes = f", {e['classes']} classes" if e.get("classes") else ", no class labels"
    return (
        f"{s['samples_seen']:,} samples seen ({s['steps']} steps × {s['samples_per_step']}), "
        f"seeds {s['seeds']}; eval set {e['path']}: {e['pairs']:,} pairs{classes}, "
        f"{e['dropped']['either']} dropped as overlapping training data; retrieval in pools of {s['pool']}"
    )


def print_table(results: list[tuple[str, dict[str, Any]]]) -> None:
    """The results table in the terminal, with the settings and any reason the runs do not compare."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table(results)
    t = Table(title="Proxy evaluation of curation (mean ± sd over seeds)")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    console = Console()
    console = Console(width=max(console.width, TABLE_WIDTH)) if console.width < TABLE_WIDTH else console
    console.print(t)
    console.print(describe(results[0][1]))
    for name, r in results[1:]:
        diff = differences(results[0][1], r)
        if diff:
            console.print(f"[bold red]{name} was evaluated differently[/]: {', '.join(diff)} differ")
