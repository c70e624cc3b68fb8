"""Fingerprints of the phases: what each reads of the config, of the files it loads and of the phases before
it, as the registry declares them. A phase's results live in the cache under its fingerprint, so a run reuses
every phase whose fingerprint is unchanged and recomputes from the first changed one on (`Layout`), and
`vlmforge curate --plan` can say which phases will run and which config keys changed.
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

from vlmforge.common.files import read_json, write_json
from vlmforge.common.storage import Location, location
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.readers.common import InputPart
from vlmforge.pipeline.registry import PHASES, enabled_phases, lookup


def phase_config(cfg_dict: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    """The config values of `keys` (a phase's `reads`), flattened to dotted keys."""
    out: dict[str, Any] = {}
    for key in keys:
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
    st = location(part.path).stat()
    return [part.path, st.st_size, st.st_mtime_ns, part.format, list(part.row_groups), part.first_row]


def part_key(identity: list, cfg_dict: dict) -> str:
    """A phase-1 part's cache key: its input bytes (`input_identity`) and phase 1's config."""
    p1 = PHASES[0]
    return digest(p1.name, p1.version, identity, phase_config(cfg_dict, p1.reads))


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
    def build(cls, cfg: CurateConfig, parts: list[InputPart], cache: str | Location) -> Layout:
        cfg_dict = cfg.model_dump(mode="json")
        identities = {p.name: input_identity(p) for p in parts}
        keys = {name: part_key(identity, cfg_dict) for name, identity in identities.items()}
        inputs = {keys[name]: digest(identity) for name, identity in identities.items()}
        fps: dict[str, str] = {}
        rows: dict[str, str] = {}
        first, *later = enabled_phases(cfg)
        for m in first.measures:
            files = file_identity(lookup(cfg_dict, m.file)) if m.file else []
            rows[m.name] = digest(m.name, first.version, phase_config(cfg_dict, m.reads), files)
        previous = digest(sorted(keys.values()))
        for phase in later:
            files = file_identity(lookup(cfg_dict, phase.file)) if phase.file else []
            config = phase_config(cfg_dict, phase.reads)
            previous = fps[phase.name] = digest(phase.name, phase.version, previous, config, files)
            if phase.row_cached:
                rows[phase.name] = digest(phase.name, phase.version, config, files)
        return cls(str(cache), keys, fps, inputs, rows)

    def phase1(self, key: str) -> tuple[Location, Location, Location]:
        """(kept rows, rejected rows, stats) of one phase-1 part; the stats file marks it done."""
        d = location(self.cache) / "phase1"
        return d / f"{key}.parquet", d / f"{key}.rejected.parquet", d / f"{key}.stats.json"

    def dir(self, phase: str) -> Location:
        return location(self.cache) / phase / self.fps[phase]

    def exchanges(self, phase: str) -> Location:
        """Where a global phase's persisted exchanges live while it runs (`engine.shuffle.persisted`)."""
        return location(self.cache) / "exchange" / phase / self.fps[phase]

    def row_cache(self, phase: str, key: str) -> Location:
        """The per-row results of a model pass (or a phase-1 stage's measurements) over one input part's rows,
        ever computed with this config."""
        return location(self.cache) / "rows" / phase / self.rows[phase] / f"{self.inputs[key]}.parquet"

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
