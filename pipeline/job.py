"""The curation job: phases run in order on Ray, each materialised so a re-run resumes where it stopped."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pipeline
from pipeline.cache import MANIFEST, cache_dir
from pipeline.config import CurateConfig
from pipeline.errors import AccountingError, JobError
from pipeline.exact_dedup import resolve_exact_duplicates
from pipeline.finalize import FinalizeWorker
from pipeline.fingerprints import Layout
from pipeline.later_phases import alignment_phase, diversity_phase, enrichment_phase
from pipeline.near_dedup import resolve_near_duplicates
from pipeline.phase1 import Phase1Worker, cached_result
from pipeline.ray_runner import cluster_cpus, map_units, start_ray
from pipeline.readers import discover_parts, fingerprint
from pipeline.shuffle import in_process
from pipeline.stages.base import StageStats
from pipeline.stages.language_id import fasttext_path
from pipeline.survivors import ENRICHMENTS
from pipeline.writer import read_json, write_json

LATER_STAGES = ("alignment", "diversity", *ENRICHMENTS)


def merge_stage_stats(per_part: list[dict]) -> list[StageStats]:
    """Sum the per-part stats of each stage, keeping stage order."""
    merged: dict[str, StageStats] = {}
    for result in per_part:
        for d in result["stages"]:
            s = StageStats.from_dict(d)
            if s.name in merged:
                merged[s.name].merge(s)
            else:
                merged[s.name] = s
    return list(merged.values())


def check_accounting(stages: list[StageStats], output_rows: int, rejected_rows: int) -> dict:
    """Verify rows in = rows out + rejected per stage, stage to stage, and in total."""
    for s in stages:
        if s.rows_in != s.rows_out + s.rejected:
            raise AccountingError(
                f"stage {s.name}: {s.rows_in} in != {s.rows_out} out + {s.rejected} rejected"
            )
    for a, b in zip(stages, stages[1:], strict=False):
        if a.rows_out != b.rows_in:
            raise AccountingError(
                f"stage {a.name} passed {a.rows_out} rows but {b.name} received {b.rows_in}"
            )
    total_in = stages[0].rows_in if stages else 0
    if stages and stages[-1].rows_out != output_rows:
        raise AccountingError(f"last stage kept {stages[-1].rows_out} rows but {output_rows} were written")
    if total_in != output_rows + rejected_rows:
        raise AccountingError(f"{total_in} input rows != {output_rows} written + {rejected_rows} rejected")
    return {"input_rows": total_in, "output_rows": output_rows, "rejected_rows": rejected_rows}


def exact_dedup_stage(cfg: CurateConfig, layout: Layout, rows_in: int, log: Callable) -> StageStats:
    """Run (or reuse) the exact-duplicate resolution of phase 2; its stats as a stage."""

    def compute() -> dict:
        kept_files = [str(layout.phase1(key)[0]) for key in layout.parts.values()]
        partitions = max(2 * cluster_cpus(), rows_in // 500_000)
        counts = resolve_exact_duplicates(kept_files, layout.dir("exact_dedup"), cfg.exact_dedup, partitions)
        return {"reasons": dict(counts), "counters": {}}

    done = layout.run_once("exact_dedup", compute, log, "phase 2: exact duplicates across the dataset")
    return StageStats.from_done("exact_dedup", rows_in, done)


def near_dedup_stage(cfg: CurateConfig, layout: Layout, rows_in: int, log: Callable) -> StageStats:
    """Run (or reuse) the near-duplicate resolution of phase 2; its stats as a stage."""

    def compute() -> dict:
        nd = cfg.near_dedup
        bands = nd.caption.band_shape()[0] if nd.caption.enabled else 0
        band_rows = rows_in * (bands + (nd.image.bands if nd.image.enabled else 0))
        partitions = max(2 * (cfg.ray.workers or cluster_cpus()), -(-band_rows // 4_000_000))
        files = [(key, str(layout.phase1(key)[0])) for key in layout.parts.values()]
        exact_dir, out_dir = layout.dir("exact_dedup"), layout.dir("near_dedup")
        return resolve_near_duplicates(files, exact_dir, out_dir, nd, partitions)

    done = layout.run_once("near_dedup", compute, log, "phase 2: near duplicates across the dataset")
    return StageStats.from_done("near_dedup", rows_in, done)


def _check_output_dir(out: Path, cache: Path, overwrite: bool) -> None:
    """Refuse an output directory that holds something other than a vlmforge run, unless `overwrite`;
    with `overwrite`, clear the run's outputs and its cache."""
    ours = (out / MANIFEST).exists() or (cache / "state.json").exists()
    if out.exists() and any(out.iterdir()) and not ours and not overwrite:
        raise JobError(
            f"output directory {out} is not empty and holds no vlmforge run; "
            "choose another --output or pass --overwrite"
        )
    if overwrite:
        for target in (cache, out / "data", out / "rejected", out / MANIFEST):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def remove_stale_outputs(out: Path, files: dict[str, list[str]]) -> None:
    """Delete shards under data/ and rejected/ that this run did not write (an earlier config's)."""
    keep = {out / f for names in files.values() for f in names}
    for sub in ("data", "rejected"):
        for f in (out / sub).glob("*.parquet"):
            if f not in keep:
                f.unlink()


WRITE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def remove_temporaries(*dirs: Path) -> None:
    """Delete temporary files killed writers left under `dirs` (once no writer of this run is left)."""
    for d in dirs:
        for tmp in d.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def output_fault(exc: BaseException) -> OSError | None:
    """The write failure (disk full, read-only, no permission) behind `exc`, also when a Ray worker raised
    it (Ray passes the worker's traceback on as text, so its message is searched too); None otherwise."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    text = str(exc)
    for code in WRITE_ERRNOS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), "a file written by a Ray worker")
    return None


def run_curation(
    cfg: CurateConfig, progress: bool = True, overwrite: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Run (or resume) the curation job described by `cfg`; returns the manifest.

    A write failure under the output (disk full, read-only, no permission) ends the job with a JobError
    that says so; finished parts stay, nothing partial is visible, and the same command resumes.
    """
    try:
        return _run_curation(cfg, progress, overwrite, log)
    except Exception as e:
        fault = output_fault(e)
        if fault is None:
            raise
        # of the writers the failure stopped (Ray is down by now)
        remove_temporaries(Path(cfg.output.path), cache_dir(cfg))
        raise JobError(
            f"cannot write under {cfg.output.path}: {WRITE_ERRNOS[fault.errno]} "
            f"({fault.strerror}: {fault.filename or 'a file'}). Free space or fix the permissions, then run "
            "the same command again: finished work is reused."
        ) from None


def _run_curation(cfg: CurateConfig, progress: bool, overwrite: bool, log: Callable[[str], None]) -> dict:
    if not cfg.output.path:
        raise JobError("no output: pass --output DIR or set output.path")
    out, cache = Path(cfg.output.path), cache_dir(cfg)
    parts = discover_parts(cfg.input)
    layout = Layout.build(cfg, parts, cache)
    manifest = read_json(out / MANIFEST)
    if manifest and manifest.get("fingerprints") == layout.fps and not overwrite:
        log(f"{out} is already complete for this config and input: nothing to do")
        return {**manifest, "already_complete": True}
    _check_output_dir(out, cache, overwrite)
    if cfg.ocr.enabled:
        from pipeline.stages.ocr import check_tesseract

        check_tesseract(cfg.ocr)
    if cfg.language.enabled and not (model := fasttext_path(cfg.language.model_path)).is_file():
        raise JobError(f"language.model_path: no fastText model at {model}")
    state = read_json(cache / "state.json") or {}
    if state.get("finalizing") != layout.fps["finalize"]:
        # data/ may hold another config's shards by now: this fingerprint's finalize markers are stale
        shutil.rmtree(layout.dir("finalize"), ignore_errors=True)
    write_json(cache / "state.json", {"finalizing": layout.fps["finalize"]})

    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        workers = cfg.ray.workers or cluster_cpus()
        cfg_json, layout_json = cfg.model_dump_json(), layout.to_json()
        phases: dict[str, dict] = {}

        t0 = time.perf_counter()
        cached = {p.name: done for p in parts if (done := cached_result(p, layout)) is not None}
        todo = [p.to_dict() for p in parts if p.name not in cached]
        log(f"phase 1: {len(todo)} of {len(parts)} parts to run ({len(cached)} cached), {workers} workers")
        p1 = list(cached.values())
        if todo:
            worker_args = {"cfg_json": cfg_json, "layout_json": layout_json}
            p1 += map_units(todo, Phase1Worker, worker_args, workers, progress)
        stages = merge_stage_stats(p1)
        reused = sum(r["reused"] for r in p1)
        ran = merge_stage_stats([r for r in p1 if not r["reused"]])
        phases["phase1"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "parts": len(parts),
            "reused": reused,
            # The work of this run alone (`stages` also counts parts taken from the cache)
            "counters": {s.name: dict(s.counters) for s in ran if s.counters},
        }

        t0 = time.perf_counter()
        reused2 = layout.done("exact_dedup") and (not layout.has("near_dedup") or layout.done("near_dedup"))
        # Small jobs run phase 2 and finalize in this process: Ray workers would cost more to start
        small = cfg.ray.in_driver(pairs := stages[0].rows_in)
        if small:
            log(f"{pairs} input pairs <= ray.in_process_rows: phase 2 and finalize run in the driver")
        with in_process(small):
            stages.append(exact_dedup_stage(cfg, layout, stages[-1].rows_out, log))
            if cfg.near_dedup.enabled:
                stages.append(near_dedup_stage(cfg, layout, stages[-1].rows_out, log))
        phases["phase2"] = {"seconds": round(time.perf_counter() - t0, 3), "reused": reused2}

        keys, cpus = list(layout.parts.values()), cluster_cpus()
        alignment, diversity_stats = {}, {}
        if cfg.alignment.enabled:
            stage, alignment = alignment_phase(cfg, layout, keys, stages[-1].rows_out, cpus, progress, log)
            stages.append(stage)
        if cfg.diversity.enabled:
            stage, diversity_stats = diversity_phase(cfg, layout, keys, stages[-1].rows_out, cpus, log)
            stages.append(stage)
        for kind in ENRICHMENTS:
            if getattr(cfg, kind).enabled:
                stages.append(
                    enrichment_phase(kind, cfg, layout, keys, stages[-1].rows_out, cpus, progress, log)
                )
        phases.update({s.name: {"seconds": s.seconds} for s in stages if s.name in LATER_STAGES})

        t0 = time.perf_counter()
        log("finalize: writing data/ and rejected/")
        fin = map_units(
            [{"part": p.name} for p in parts],
            FinalizeWorker,
            {"cfg_json": cfg_json, "layout_json": layout_json, "out": str(out)},
            workers,
            progress,
            in_process=small,
        )
        phases["finalize"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "reused": sum(r["reused"] for r in fin),
        }
        totals = check_accounting(
            stages, sum(r["data_rows"] for r in fin), sum(r["rejected_rows"] for r in fin)
        )
        manifest = {
            "vlmforge_version": pipeline.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "recipe_hash": cfg.recipe_hash(),
            "config": cfg.model_dump(mode="json"),
            "input": {
                "path": cfg.input.path,
                "format": parts[0].format,
                "parts": len(parts),
                "fingerprint": fingerprint(parts),
            },
            "fingerprints": layout.fps,
            "part_keys": layout.parts,
            "row_caches": layout.rows,
            "totals": totals,
            "stages": [s.to_dict() for s in stages],
            "alignment": alignment,
            "diversity": diversity_stats,
            "phases": phases,
            "files": {
                "data": [f"data/{f}" for r in fin for f in r["data"]],
                "rejected": [f"rejected/{r['rejected']}" for r in fin],
            },
        }
        write_json(out / MANIFEST, manifest)
        remove_stale_outputs(out, manifest["files"])
        remove_temporaries(out, cache)
        return manifest
    finally:
        if started:
            import ray

            ray.shutdown()
