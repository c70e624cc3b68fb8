"""What a run will reuse from the phase cache (`vlmforge curate --plan`), and cleaning the cache
(`vlmforge cache gc`)."""

from __future__ import annotations

from pathlib import Path

from vlmforge.common.files import read_json
from vlmforge.common.storage import Location, location, rmtree
from vlmforge.pipeline.cache.layout import Layout, phase_config
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.readers import discover_parts
from vlmforge.pipeline.registry import Phase, enabled_phases

MANIFEST = "manifest.json"


def cache_dir(cfg: CurateConfig) -> Location:
    """Where phase results are cached: `output.cache`, else `<output>/_work`."""
    return location(cfg.output.cache) if cfg.output.cache else location(cfg.output.path) / "_work"


def changed_keys(before: dict | None, after: dict, phase: Phase) -> list[str]:
    """The config keys `phase` reads whose values differ between two configs (none without a before)."""
    new = phase_config(after, phase.reads)
    if before is None:
        return []
    old = phase_config(before, phase.reads)
    return sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))


def plan(cfg: CurateConfig) -> list[dict]:
    """For each phase of the recipe: whether a run would reuse its cached results or compute it, and why."""
    out = location(cfg.output.path)
    parts = discover_parts(cfg.input)
    layout = Layout.build(cfg, parts, cache_dir(cfg))
    previous = read_json(out / MANIFEST)
    before = previous["config"] if previous else None
    after = cfg.model_dump(mode="json")
    cached = sum(layout.phase1(k)[2].is_file() for k in layout.parts.values())
    first, *later = enabled_phases(cfg)
    rows = [
        {
            "phase": first.name,
            "action": "reuse" if cached == len(parts) else "run",
            "why": f"{cached} of {len(parts)} input parts cached"
            + (f"; changed: {', '.join(keys)}" if (keys := changed_keys(before, after, first)) else ""),
        }
    ]
    upstream = cached < len(parts)
    for phase in later:
        if phase.name == "finalize":
            written = (previous or {}).get("fingerprints", {}).get("finalize")
            done = written == layout.fps["finalize"]
        else:
            done = layout.done(phase.name)
        keys = changed_keys(before, after, phase)
        if done:
            why = "cached"
        elif keys:
            why = "changed: " + ", ".join(keys)
        elif upstream:
            why = "an earlier phase runs"
        else:
            why = "no cached result" if previous is None else "not cached for this input"
        rows.append({"phase": phase.name, "action": "reuse" if done else "run", "why": why})
        upstream = upstream or not done
    return rows


def gc(outputs: list[Path]) -> dict:
    """Delete the cache entries none of `outputs` (their manifests) refers to; returns files and bytes freed.
    Outputs sharing one cache directory are kept together."""
    keep: dict[Path, set[str]] = {}
    for out in outputs:
        manifest = read_json(out / MANIFEST)
        if manifest is None:
            raise FileNotFoundError(f"{out} holds no finished run (no {MANIFEST})")
        cache = location(manifest["config"]["output"].get("cache") or out / "_work")
        names = keep.setdefault(cache, {"state.json"})
        names.update(f"phase1/{k}" for k in manifest.get("part_keys", {}).values())
        names.update(f"{phase}/{fp}" for phase, fp in manifest.get("fingerprints", {}).items())
        names.update(f"rows/{phase}/{fp}" for phase, fp in manifest.get("row_caches", {}).items())
    freed = {"entries": 0, "bytes": 0}
    for cache, names in keep.items():
        for entry in sorted(cache.glob("rows/*/*")) + sorted(cache.glob("*/*")) + sorted(cache.glob("*")):
            rel = entry.relative_to(cache).as_posix()
            name = rel.split(".")[0] if rel.startswith("phase1/") else rel
            if not entry.exists() or name in names or any(n.startswith(rel + "/") for n in names):
                continue
            size = (
                sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                if entry.is_dir()
                else (entry.stat().st_size)
            )
            rmtree(entry) if entry.is_dir() else entry.unlink()
            freed["entries"] += 1
            freed["bytes"] += size
    return freed
