"""Fingerprints of the phases: what each reads of the config, of the files it loads and of the phases before
it. A phase's results live in the cache under its fingerprint, so a run reuses every phase whose fingerprint
is unchanged and recomputes from the first changed one on (`Layout`), and `vlmforge curate --plan` can say
which phases will run and which config keys changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import CurateConfig
from pipeline.readers.common import InputPart
from pipeline.writer import read_json, write_json

# Bump a phase's version when its code changes its results: its cache entries (and those after it) then
# stop matching.
VERSIONS = {
    "phase1": 1,
    "exact_dedup": 1,
    "near_dedup": 1,
    "alignment_scores": 1,
    "alignment": 1,
    "diversity": 1,
    "ocr": 1,
    "synthetic_caption": 1,
    "finalize": 1,
}
# How the readers assemble each input row: a row's content at an ordinal of its part depends on these.
READER_KEYS = (
    "input.format", "input.caption_column", "input.image_column", "input.image_path_column",
    "input.id_column", "input.root", "input.max_caption_bytes", "input.max_image_bytes",
)  # fmt: skip
PHASE_KEYS: dict[str, tuple[str, ...]] = {
    "phase1": (
        *READER_KEYS, "caption", "language", "image", "near_dedup.caption.enabled",
        "near_dedup.caption.ngram", "near_dedup.caption.num_perm", "near_dedup.caption.seed",
        "near_dedup.image.enabled",
        "output.rejected_caption_chars", "output.gallery_per_reason",
    ),
    "exact_dedup": ("exact_dedup",),
    "near_dedup": ("near_dedup",),
    "alignment_scores": (
        "alignment.scorer", "alignment.checkpoint", "alignment.model_name", "alignment.tokenizer",
    ),
    "alignment": ("alignment.min_score", "alignment.drop_percentile"),
    "diversity": ("diversity",),
    "ocr": ("ocr.languages", "ocr.psm", "ocr.timeout_s", "ocr.min_confidence", "ocr.max_chars", "ocr.detect",
            "ocr.text_px", "ocr.max_upscale", "ocr.max_side"),
    "synthetic_caption": (
        "synthetic_caption.checkpoint", "synthetic_caption.tokenizer", "synthetic_caption.prompt",
        "synthetic_caption.max_new_tokens", "synthetic_caption.temperature", "synthetic_caption.top_p",
        "synthetic_caption.seed", "synthetic_caption.dtype",
    ),
    "finalize": ("output.rows_per_shard", "output.row_group_rows", "output.compression", "ocr.separator"),
}  # fmt: skip
# Phase-1 stages that keep their per-row measurements (`MeasuredStage`), and the config keys a measurement
# depends on. Thresholds are left out: a run with a new threshold re-decides from the cached measurements.
MEASURE_KEYS: dict[str, tuple[str, ...]] = {
    "language": (*READER_KEYS, "language.model_path", "language.top_k"),
    "image": (*READER_KEYS, "image.max_pixels", "image.decode_side", "image.reencode_quality",
              "near_dedup.image.enabled"),
    "minhash": (*READER_KEYS, "near_dedup.caption.ngram", "near_dedup.caption.num_perm",
                "near_dedup.caption.seed"),
}  # fmt: skip
# Model passes whose per-row results are also cached by row id, whatever the phases before them decided: a
# changed threshold upstream then costs only the rows not seen before.
ROW_CACHED = ("alignment_scores", "ocr", "synthetic_caption")
# Files a phase (or a measured phase-1 stage) loads whose contents change its results (their size and
# modification time are hashed).
PHASE_FILES = {
    "language": "language.model_path",
    "alignment_scores": "alignment.checkpoint",
    "diversity": "diversity.reference",
    "synthetic_caption": "synthetic_caption.checkpoint",
}


def lookup(data: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        data = data.get(k) if isinstance(data, dict) else None
    return data


def phase_config(cfg_dict: dict, phase: str, keys: dict[str, tuple[str, ...]] = PHASE_KEYS) -> dict[str, Any]:
    """The config values `phase` reads (its `keys`), flattened to dotted keys."""
    out: dict[str, Any] = {}
    for key in keys[phase]:
        value = lookup(cfg_dict, key)
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def file_identity(path: str | None) -> list:
    """(name, size, mtime) of a file, or of every file under a directory; empty when absent."""
    if not path:
        return []
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    return [[str(f), (st := os.stat(f)).st_size, st.st_mtime_ns] for f in files]


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_identity(part: InputPart) -> list:
    """What identifies an input part's bytes: path, size, modification time, row groups."""
    st = os.stat(part.path)
    return [part.path, st.st_size, st.st_mtime_ns, part.format, list(part.row_groups), part.first_row]


def part_key(part: InputPart, cfg_dict: dict) -> str:
    """A phase-1 part's cache key: its input bytes and phase 1's config."""
    return digest("phase1", VERSIONS["phase1"], input_identity(part), phase_config(cfg_dict, "phase1"))


def enabled_phases(cfg: CurateConfig) -> list[str]:
    """The global phases of this recipe, in order."""
    phases = ["exact_dedup"]
    if cfg.near_dedup.enabled:
        phases.append("near_dedup")
    if cfg.alignment.enabled:
        phases += ["alignment_scores", "alignment"]
    if cfg.diversity.enabled:
        phases.append("diversity")
    phases += [p for p in ("ocr", "synthetic_caption") if getattr(cfg, p).enabled]
    return [*phases, "finalize"]


@dataclass(frozen=True)
class Layout:
    """Where each phase's results live in the cache: phase-1 files by part key, the other phases in a
    directory named by their fingerprint. `parts` maps each input part's name to its key."""

    cache: str
    parts: dict[str, str] = field(default_factory=dict)
    fps: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # part key -> digest of its input's identity
    rows: dict[str, str] = field(default_factory=dict)  # row-cached pass or stage -> digest of its config

    @classmethod
    def build(cls, cfg: CurateConfig, parts: list[InputPart], cache: str | Path) -> Layout:
        cfg_dict = cfg.model_dump(mode="json")
        keys = {p.name: part_key(p, cfg_dict) for p in parts}
        inputs = {keys[p.name]: digest(input_identity(p)) for p in parts}
        fps: dict[str, str] = {}
        rows: dict[str, str] = {}
        for stage in MEASURE_KEYS:
            files = file_identity(lookup(cfg_dict, PHASE_FILES[stage])) if stage in PHASE_FILES else []
            config = phase_config(cfg_dict, stage, MEASURE_KEYS)
            rows[stage] = digest(stage, VERSIONS["phase1"], config, files)
        previous = digest(sorted(keys.values()))
        for phase in enabled_phases(cfg):
            files = file_identity(lookup(cfg_dict, PHASE_FILES[phase])) if phase in PHASE_FILES else []
            config = phase_config(cfg_dict, phase)
            previous = fps[phase] = digest(phase, VERSIONS[phase], previous, config, files)
            if phase in ROW_CACHED:
                rows[phase] = digest(phase, VERSIONS[phase], config, files)
        return cls(str(cache), keys, fps, inputs, rows)

    def phase1(self, key: str) -> tuple[Path, Path, Path]:
        """(kept rows, rejected rows, stats) of one phase-1 part; the stats file marks it done."""
        d = Path(self.cache) / "phase1"
        return d / f"{key}.parquet", d / f"{key}.rejected.parquet", d / f"{key}.stats.json"

    def dir(self, phase: str) -> Path:
        return Path(self.cache) / phase / self.fps[phase]

    def row_cache(self, phase: str, key: str) -> Path:
        """The per-row results of a model pass (or a phase-1 stage's measurements) over one input part's rows,
        ever computed with this config."""
        return Path(self.cache) / "rows" / phase / self.rows[phase] / f"{self.inputs[key]}.parquet"

    def run_once(
        self, phase: str, compute: Callable[[], dict], log: Callable[[str], None], message: str
    ) -> dict:
        """The phase's summary (`_done.json`): as cached, else from `compute()` now, timed and written."""
        path = self.dir(phase) / "_done.json"
        if (done := read_json(path)) is not None:
            return done
        log(message)
        t0 = time.perf_counter()
        done = compute()
        done["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(path, done)
        return done

    def has(self, phase: str) -> bool:
        return phase in self.fps

    def done(self, phase: str) -> bool:
        return self.has(phase) and (self.dir(phase) / "_done.json").is_file()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        return cls(**json.loads(text))
