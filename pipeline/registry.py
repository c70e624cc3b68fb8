"""The phases of a curation job, declared once. The job runs them in this order; fingerprints, `--plan`, the
manifest and the report read the same declarations.

Adding a phase: a folder with a module whose `run(ctx)` does the work, and one `Phase` entry below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from vlmforge.pipeline.cache.layout import Layout
    from vlmforge.pipeline.config import CurateConfig
    from vlmforge.pipeline.engine.accounting import StageStats
    from vlmforge.pipeline.readers.common import InputPart

# How the readers assemble each input row: a row's content at an ordinal of its part depends on these.
READER_KEYS = (
    "input.format", "input.caption_column", "input.image_column", "input.image_path_column",
    "input.id_column", "input.root", "input.max_caption_bytes", "input.max_image_bytes",
)  # fmt: skip


@dataclass(frozen=True)
class Measure:
    """A phase-1 stage whose per-row measurements are cached by row ordinal, whatever its thresholds: the
    config keys (and file) a measurement depends on."""

    name: str
    reads: tuple[str, ...]
    file: str | None = None


@dataclass(frozen=True)
class Phase:
    """One phase of the job.

    name: its cache directory and its stage's name in the accounting. version: bump it when the code changes
    the phase's results (its cache entries, and those after it, stop matching). reads: the config keys its
    results depend on. file: a config key naming a file or directory whose identity (size, mtime) counts
    too. scope: `part` runs over each input part on its own, `global` decides across the dataset. module:
    `vlmforge.pipeline.<module>` holds its `run(ctx)`. enabled: the config key that turns it on (None:
    always). adds: the columns it gives kept rows. row_cached: its per-row results are also kept by row id
    across runs. group: the manifest's timing entry it counts towards.
    """

    name: str
    version: int
    reads: tuple[str, ...]
    scope: Literal["part", "global"]
    module: str
    title: str
    enabled: str | None = None
    file: str | None = None
    adds: tuple[str, ...] = ()
    row_cached: bool = False
    group: str = ""
    measures: tuple[Measure, ...] = field(default=())
    model: str | None = None
    model_reads: tuple[str, ...] = ()
    stage: bool = True

    @property
    def section(self) -> str:
        """The config section that turns it on and configures it."""
        return (self.enabled or self.name).split(".")[0]

    def on(self, cfg: CurateConfig) -> bool:
        """Whether the recipe runs this phase (`enabled` may name a property, such as near_dedup.enabled)."""
        value: Any = cfg
        for key in (self.enabled or "").split(".") if self.enabled else ():
            value = getattr(value, key)
        return bool(value)

    @property
    def timing(self) -> str:
        return self.group or self.name

    def runner(self) -> Callable[[Context], PhaseResult]:
        return importlib.import_module(f"vlmforge.pipeline.{self.module}").run

    def build_model(self, cfg: CurateConfig) -> Any:
        """The model of a model pass (`model` is `module:Class`), built from the phase's config section: a
        callable from a table of `model_reads` columns to a table of id and `adds`."""
        module, name = (self.model or "").split(":")
        model = getattr(importlib.import_module(f"vlmforge.pipeline.{module}"), name)
        return model(getattr(cfg, self.section))


@dataclass
class Context:
    """What a phase's `run` gets: the job's config and cache layout, the rows still in, how to report."""

    phase: Phase
    cfg: CurateConfig
    layout: Layout
    parts: list[InputPart]
    rows_in: int
    progress: bool
    log: Callable[[str], None]
    out: str = ""


@dataclass
class PhaseResult:
    """What a phase's `run` returns: its stages for the accounting, an entry for the manifest's top level
    (name -> value), this run's timing details, and anything the job needs after it."""

    stages: list[StageStats] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)


def lookup(data: dict, dotted: str) -> Any:
    """`data["a"]["b"]` for `a.b` (None where absent)."""
    for k in dotted.split("."):
        data = data.get(k) if isinstance(data, dict) else None
    return data


PHASES: tuple[Phase, ...] = (
    # phase1 2: video frames' pHashes from swscale's luma thumbnail (session 12)
    Phase(
        "phase1", 2, (
            *READER_KEYS, "caption", "language", "image", "near_dedup.caption.enabled",
            "near_dedup.caption.ngram", "near_dedup.caption.num_perm", "near_dedup.caption.seed",
            "near_dedup.image.enabled", "output.rejected_caption_chars", "output.gallery_per_reason", "video",
        ),
        "part", "filter.phase", "phase 1: filters per part",
        adds=("image_format", "width", "height", "sha256", "lang", "lang_score", "caption_words"),
        measures=(
            Measure("language", (*READER_KEYS, "language.model_path", "language.top_k",
                                 "language.structured"), "language.model_path"),
            Measure("image", (*READER_KEYS, "image.max_pixels", "image.decode_side", "image.reencode_quality",
                              "near_dedup.image.enabled")),
            Measure("minhash", (*READER_KEYS, "near_dedup.caption.ngram", "near_dedup.caption.num_perm",
                                "near_dedup.caption.seed")),
        ),
    ),
    Phase("exact_dedup", 2, ("exact_dedup",), "global", "dedup.exact",
          "phase 2: exact duplicates across the dataset", group="phase2"),
    Phase("near_dedup", 1, ("near_dedup",), "global", "dedup.near",
          "phase 2: near duplicates across the dataset", enabled="near_dedup.enabled",
          adds=("dup_cluster", "dup_cluster_size"), group="phase2"),
    Phase("video_near_dedup", 1, ("video.near_dedup", "video.fps"), "global", "video.near",
          "phase 2: near-duplicate clips (aligned frame pHashes)", enabled="video.near_dup_on",
          adds=("dup_cluster", "dup_cluster_size"), group="phase2"),
    Phase("alignment_scores", 1,
          ("alignment.scorer", "alignment.checkpoint", "alignment.model_name", "alignment.tokenizer"),
          "part", "engine.model_pass", "phase 3: image-text alignment scores", enabled="alignment.enabled",
          file="alignment.checkpoint", adds=("clip_score",), row_cached=True, group="alignment",
          model="align.scorer:AlignmentScore", model_reads=("id", "image", "caption"), stage=False),
    Phase("alignment", 1, ("alignment.min_score", "alignment.drop_percentile"), "global", "align.phase",
          "phase 3: image-text alignment", enabled="alignment.enabled", adds=("clip_score",)),
    Phase("diversity", 1, ("diversity",), "global", "diversity.phase", "phase 4: diversity resampling",
          enabled="diversity.enabled", file="diversity.reference",
          adds=("diversity_keep_prob", "diversity_score")),
    Phase("ocr", 10,
          ("ocr.languages", "ocr.psm", "ocr.timeout_s", "ocr.min_confidence", "ocr.line_confidence",
           "ocr.max_chars", "ocr.detect", "ocr.text_px", "ocr.max_upscale", "ocr.max_side", "ocr.engine",
           "ocr.colour_key", "ocr.tidy_lines", "ocr.frames_per_clip", "ocr.tessdata_dir"),
          "part", "engine.model_pass", "phase 5: ocr", enabled="ocr.enabled", file="ocr.tessdata_dir",
          adds=("ocr_text",), row_cached=True, model="enrich.ocr:OcrText",
          model_reads=("id", "image", "frames")),
    Phase("synthetic_caption", 1,
          ("synthetic_caption.checkpoint", "synthetic_caption.tokenizer", "synthetic_caption.prompt",
           "synthetic_caption.max_new_tokens", "synthetic_caption.temperature", "synthetic_caption.top_p",
           "synthetic_caption.seed", "synthetic_caption.dtype"),
          "part", "engine.model_pass", "phase 5: synthetic caption", enabled="synthetic_caption.enabled",
          file="synthetic_caption.checkpoint", adds=("synthetic_caption",), row_cached=True,
          model="enrich.synthetic_caption:SyntheticCaption", model_reads=("id", "image")),
    Phase("finalize", 1, ("output.rows_per_shard", "output.row_group_rows", "output.compression",
                          "ocr.separator"),
          "part", "finalize.phase", "finalize: writing data/ and rejected/"),
)  # fmt: skip
BY_NAME = {p.name: p for p in PHASES}
# Phases that drop rows across the dataset; a later phase sees only the rows they all kept.
GLOBAL = tuple(p for p in PHASES if p.scope == "global")


def global_before(name: str, phases: tuple[Phase, ...] = GLOBAL) -> tuple[Phase, ...]:
    """The `phases` that come before phase `name` in the registry."""
    index = PHASES.index(BY_NAME[name])
    return tuple(p for p in phases if PHASES.index(p) < index)


def enabled_phases(cfg: CurateConfig) -> list[Phase]:
    """The phases of this recipe, in order (phase 1 first, finalize last)."""
    return [p for p in PHASES if p.on(cfg)]
