"""Synthetic pretraining sources of the recipe: structured images (charts, tables, equations, flowcharts)
with their structured form, grounding scenes with boxes in the text, screenshots with the HTML of a marked
element, and question-answer pairs about scenes. `write_synth` writes them as webdataset shards for
`vlmforge curate`.

Each kind is a module with `generate(seed, index) -> Sample`: sample i depends only on (kind, seed, i), so
shards can be written in parallel and a run is reproducible.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .shards import SUMMARY, Generator, Sample, default_workers, write_shards

KINDS: tuple[str, ...] = ("charts", "tables", "equations", "flowcharts", "grounding", "screenshots", "qa")


def generator(kind: str) -> Generator:
    """The `generate(seed, index)` function of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown synth kind {kind!r}; one of {', '.join(KINDS)}")
    return importlib.import_module(f"vlmforge.pipeline.synth.{kind}").generate


def write_synth(
    kind: str,
    out: str | Path,
    n: int,
    seed: int = 0,
    shard_size: int = 500,
    workers: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Writes n samples of `kind` as out/NNNNN.tar shards plus out/synth_summary.json; returns the shards."""
    generator(kind)  # an unknown kind fails before anything is written
    if n <= 0:
        raise ValueError("--n must be positive")
    if not 1 <= shard_size <= 100_000:
        raise ValueError("--shard-size must be between 1 and 100000")
    if kind == "screenshots":
        from .screenshots import check_browser

        check_browser()
    return write_shards(kind, Path(out), n, seed, shard_size, workers or default_workers(), progress)


__all__ = ["KINDS", "SUMMARY", "Sample", "generator", "write_synth"]
