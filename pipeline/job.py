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
from pipeline.config import CurateConfig
from pipeline.errors import AccountingError, JobError
from pipeline.exact_dedup import resolve_exact_duplicates
from pipeline.finalize import FinalizeWorker
from pipeline.later_phases import alignment_phase, diversity_phase, enrichment_phase
from pipeline.near_dedup import resolve_near_duplicates
from pipeline.phase1 import Phase1Worker, part_paths
from pipeline.ray_runner import cluster_cpus, map_units, start_ray
from pipeline.readers import discover_parts, fingerprint
from pipeline.stages.base import StageStats
from pipeline.survivors import ENRICHMENTS
from pipeline.writer import read_json, write_json

MANIFEST = "manifest.json"
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


def near_dedup_stage(cfg: CurateConfig, work: Path, parts: list, rows_in: int, log: Callable) -> StageStats:
    """Run (or reuse) the near-duplicate resolution of phase 2; its stats as a stage."""
    done = read_json(work / "near_dedup" / "_done.json")
    if done is None:
        log("phase 2: near duplicates across the dataset")
        t0 = time.perf_counter()
        workers = cfg.ray.workers or cluster_cpus()
        bands = cfg.near_dedup.caption.band_shape()[0] if cfg.near_dedup.caption.enabled else 0
        band_rows = rows_in * (bands + (cfg.near_dedup.image.bands if cfg.near_dedup.image.enabled else 0))
        partitions = max(2 * workers, -(-band_rows // 4_000_000))
        files = [(p.name, str(part_paths(work, p.name)[0])) for p in parts]
        nd = cfg.near_dedup
        done = resolve_near_duplicates(files, work / "phase2", work / "near_dedup", nd, partitions)
        done["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(work / "near_dedup" / "_done.json", done)
    return StageStats.from_done("near_dedup", rows_in, done)


def _check_output_dir(out: Path, recipe_hash: str, input_fp: str, overwrite: bool) -> None:
    state = read_json(out / "_work" / "state.json")
    if state is None and out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        if not overwrite:
            raise JobError(
                f"output directory {out} is not empty and holds no vlmforge run; "
                "choose another --output or pass --overwrite"
            )
    if state and (state["recipe_hash"], state["input_fingerprint"]) != (recipe_hash, input_fp):
        if not overwrite:
            raise JobError(
                f"output directory {out} holds a run of a different config or input; "
                "choose another --output or pass --overwrite to replace it"
            )
    if overwrite and out.exists():
        for sub in ("_work", "data", "rejected", MANIFEST):
            target = out / sub
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


WRITE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def remove_temporaries(out: Path) -> None:
    """Delete temporary files a killed writer left (a finished run has no writer left to own them)."""
    for tmp in out.rglob(".*.tmp-*"):
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
        remove_temporaries(Path(cfg.output.path))  # of writers the failure stopped (Ray is down by now)
        raise JobError(
            f"cannot write under {cfg.output.path}: {WRITE_ERRNOS[fault.errno]} "
            f"({fault.strerror}: {fault.filename or 'a file'}). Free space or fix the permissions, then run "
            "the same command again: finished work is reused."
        ) from None


def _run_curation(cfg: CurateConfig, progress: bool, overwrite: bool, log: Callable[[str], None]) -> dict:
    if not cfg.output.path:
        raise JobError("no output: pass --output DIR or set output.path")
    out = Path(cfg.output.path)
    work = out / "_work"
    parts = discover_parts(cfg.input)
    input_fp, recipe_hash = fingerprint(parts), cfg.recipe_hash()
    manifest = read_json(out / MANIFEST)
    if (
        manifest
        and (manifest["recipe_hash"], manifest["input"]["fingerprint"]) == (recipe_hash, input_fp)
        and not overwrite
    ):
        log(f"{out} is already complete for this config and input: nothing to do")
        return {**manifest, "already_complete": True}
    _check_output_dir(out, recipe_hash, input_fp, overwrite)
    if cfg.ocr.enabled:
        from pipeline.stages.ocr import check_tesseract

        check_tesseract(cfg.ocr)
    write_json(work / "state.json", {"recipe_hash": recipe_hash, "input_fingerprint": input_fp})

    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        workers = cfg.ray.workers or cluster_cpus()
        cfg_json = cfg.model_dump_json()
        phases: dict[str, dict] = {}

        t0 = time.perf_counter()
        log(f"phase 1: {len(parts)} parts, {workers} workers")
        p1 = map_units(
            [p.to_dict() for p in parts],
            Phase1Worker,
            {"cfg_json": cfg_json, "work": str(work)},
            workers,
            progress,
        )
        stages = merge_stage_stats(p1)
        reused = sum(r["reused"] for r in p1)
        phases["phase1"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "parts": len(parts),
            "reused": reused,
        }

        t0 = time.perf_counter()
        done2 = read_json(work / "phase2" / "_done.json")
        reused2 = done2 is not None
        if done2 is None:
            shutil.rmtree(work / "near_dedup", ignore_errors=True)  # near dedup runs on exact survivors
            log("phase 2: exact duplicates across the dataset")
            kept_files = [str(part_paths(work, p.name)[0]) for p in parts]
            partitions = max(2 * cluster_cpus(), stages[-1].rows_out // 500_000)
            counts = resolve_exact_duplicates(kept_files, work / "phase2", cfg.exact_dedup, partitions)
            done2 = {"reasons": dict(counts)}
            write_json(work / "phase2" / "_done.json", done2)
        dedup_in = stages[-1].rows_out
        dedup = StageStats("exact_dedup", rows_in=dedup_in)
        dedup.reasons.update(done2["reasons"])
        dedup.rows_out = dedup_in - dedup.rejected
        stages.append(dedup)
        if cfg.near_dedup.enabled:
            stages.append(near_dedup_stage(cfg, work, parts, dedup.rows_out, log))
        phases["phase2"] = {"seconds": round(time.perf_counter() - t0, 3), "reused": reused2}

        names, cpus = [p.name for p in parts], cluster_cpus()
        alignment, diversity_stats = {}, {}
        if cfg.alignment.enabled:
            stage, alignment = alignment_phase(cfg, work, names, stages[-1].rows_out, cpus, progress, log)
            stages.append(stage)
        if cfg.diversity.enabled:
            stage, diversity_stats = diversity_phase(cfg, work, names, stages[-1].rows_out, cpus, log)
            stages.append(stage)
        for kind in ENRICHMENTS:
            if getattr(cfg, kind).enabled:
                stages.append(
                    enrichment_phase(kind, cfg, work, names, stages[-1].rows_out, cpus, progress, log)
                )
        phases.update({s.name: {"seconds": s.seconds} for s in stages if s.name in LATER_STAGES})

        t0 = time.perf_counter()
        log("finalize: writing data/ and rejected/")
        fin = map_units(
            [{"part": p.name} for p in parts],
            FinalizeWorker,
            {"cfg_json": cfg_json, "work": str(work), "out": str(out)},
            workers,
            progress,
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
            "recipe_hash": recipe_hash,
            "config": cfg.model_dump(mode="json"),
            "input": {
                "path": cfg.input.path,
                "format": parts[0].format,
                "parts": len(parts),
                "fingerprint": input_fp,
            },
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
        remove_temporaries(out)
        return manifest
    finally:
        if started:
            import ray

            ray.shutdown()
