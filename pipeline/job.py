"""The curation job: the registry's phases in order, each materialised so a re-run resumes where it
stopped."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from vlmforge.common import __version__
from vlmforge.common.errors import InputError, JobError
from vlmforge.common.files import read_json, write_json
from vlmforge.common.storage import (
    RETRIES,
    Location,
    ObjectPath,
    Stat,
    check_bucket,
    is_remote,
    location,
    rmtree,
    tree_bytes,
)
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.cache.plan import MANIFEST, cache_dir
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.engine.accounting import StageStats, check_accounting
from vlmforge.pipeline.engine.executor import Executor
from vlmforge.pipeline.filter.language_id import fasttext_path
from vlmforge.pipeline.readers import count_rows, discover_parts, file_stats, fingerprint
from vlmforge.pipeline.registry import Context, enabled_phases


def _check_output_dir(out: Location, cache: Location, overwrite: bool) -> None:
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
                rmtree(target)
            elif target.exists():
                target.unlink()


def remove_stale_outputs(out: Location, files: dict[str, list[str]]) -> None:
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


def remove_temporaries(*dirs: Location) -> None:
    """Delete temporary files killed writers left under `dirs` (once no writer of this run is left)."""
    for d in dirs:
        if is_remote(d):  # objects are uploaded whole: a store never holds temporaries
            continue
        for tmp in d.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception behind it (causes, contexts, a Ray task error's `cause`), once each."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]


def output_fault(exc: BaseException) -> OSError | None:
    """The write failure (disk full, read-only, no permission) behind `exc`, also when a Ray worker raised
    it (Ray passes the worker's traceback on as text, so its message is searched too); None otherwise."""
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
    text = str(exc)
    for code in WRITE_ERRNOS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), "a file written by a Ray worker")
    return None


STORE_ERRORS = ("AWS Error", "curlCode", "GCS Error", "StoreError")


def store_fault(exc: BaseException) -> str | None:
    """The object-store request that failed behind `exc` (its first line names the bucket and key), also
    when a Ray worker raised it; None when the store is not to blame."""
    for e in causes(exc):
        for line in str(e).splitlines():
            if any(marker in line for marker in STORE_ERRORS):
                return line.strip()[:300]
    return None


def storage_report(stats: dict[str, Stat], cache: Location, out: Location) -> dict:
    """Bytes of the input (`file_stats`), of the phase cache this run leaves and of its output, with the
    cache's and the output's shares of the input (what intermediate storage a job of this recipe needs)."""
    sizes = {
        "input_bytes": sum(st.st_size for st in stats.values()),
        "cache_bytes": tree_bytes(cache),
        "output_bytes": tree_bytes(out / "data") + tree_bytes(out / "rejected"),
    }
    total = max(sizes["input_bytes"], 1)
    return {
        **sizes,
        "cache_share_of_input": round(sizes["cache_bytes"] / total, 3),
        "output_share_of_input": round(sizes["output_bytes"] / total, 3),
    }


def run_curation(
    cfg: CurateConfig, progress: bool = True, overwrite: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Run (or resume) the curation job described by `cfg`; returns the manifest.

    A write failure under the output (disk full, read-only, no permission) ends the job with a JobError
    that says so; finished parts stay, nothing partial is visible, and the same command resumes.
    """
    try:
        return _run_curation(cfg, progress, overwrite, log)
    except (InputError, JobError):
        raise  # already says what failed
    except Exception as e:
        if (failed := store_fault(e)) is not None:
            raise JobError(
                f"object storage failed after {RETRIES} attempts: {failed}. When the store is back, run the "
                "same command again: finished work is reused."
            ) from None
        fault = output_fault(e)
        if fault is None:
            raise
        # of the writers the failure stopped (Ray is down by now)
        remove_temporaries(location(cfg.output.path), cache_dir(cfg))
        raise JobError(
            f"cannot write under {cfg.output.path}: {WRITE_ERRNOS[fault.errno]} "
            f"({fault.strerror}: {fault.filename or 'a file'}). Free space or fix the permissions, then run "
            "the same command again: finished work is reused."
        ) from None


def _run_curation(cfg: CurateConfig, progress: bool, overwrite: bool, log: Callable[[str], None]) -> dict:
    if not cfg.output.path:
        raise JobError("no output: pass --output DIR or set output.path")
    out, cache = location(cfg.output.path), cache_dir(cfg)
    for where in (out, cache):
        if isinstance(where, ObjectPath):
            try:
                check_bucket(where)
            except InputError as e:
                raise JobError(f"cannot write there: {e}") from None
    parts = discover_parts(cfg.input)
    layout = Layout.build(cfg, parts, cache)
    manifest = read_json(out / MANIFEST)
    if manifest and manifest.get("fingerprints") == layout.fps and not overwrite:
        log(f"{out} is already complete for this config and input: nothing to do")
        return {**manifest, "already_complete": True}
    _check_output_dir(out, cache, overwrite)
    if cfg.ocr.enabled:
        from vlmforge.pipeline.enrich.ocr import check_tesseract

        check_tesseract(cfg.ocr)
    if cfg.language.enabled and not (model := fasttext_path(cfg.language.model_path)).is_file():
        raise JobError(f"language.model_path: no fastText model at {model}")
    state = read_json(cache / "state.json") or {}
    if state.get("finalizing") != layout.fps["finalize"]:
        # data/ may hold another config's shards by now: this fingerprint's finalize markers are stale
        rmtree(layout.dir("finalize"), ignore_errors=True)
    write_json(cache / "state.json", {"finalizing": layout.fps["finalize"]})

    in_driver = cfg.ray.in_driver(lambda limit: count_rows(parts, limit))
    if in_driver:
        log(
            f"at most ray.in_process_rows ({cfg.ray.in_process_rows}) input pairs: "
            "the job runs in this process"
        )
    with Executor(in_driver, cfg.ray.address, cfg.ray.num_cpus):
        stages: list[StageStats] = []
        timings: dict[str, dict] = {}
        extra: dict = {}
        rows: dict = {}
        for phase in enabled_phases(cfg):
            ctx = Context(
                phase, cfg, layout, parts, stages[-1].rows_out if stages else 0, progress, log, str(out)
            )
            t0 = time.perf_counter()
            result = phase.runner()(ctx)
            stages += result.stages
            extra.update(result.manifest)
            rows.update(result.output.get("rows", {}))
            timing = timings.setdefault(phase.timing, {"seconds": 0.0})
            timing["seconds"] = round(timing["seconds"] + time.perf_counter() - t0, 3)
            for key, value in result.timing.items():
                timing[key] = (timing[key] and value) if isinstance(value, bool) and key in timing else value
    totals = check_accounting(stages, rows["data"], rows["rejected"])
    stats = file_stats(parts)
    manifest = {
        "vlmforge_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe_hash": cfg.recipe_hash(),
        "config": cfg.model_dump(mode="json"),
        "input": {
            "path": cfg.input.path,
            "format": parts[0].format,
            "parts": len(parts),
            "fingerprint": fingerprint(stats),
        },
        "fingerprints": layout.fps,
        "part_keys": layout.parts,
        "row_caches": layout.rows,
        "totals": totals,
        "stages": [s.to_dict() for s in stages],
        "alignment": {},
        "diversity": {},
        **extra,
        "phases": timings,
        "in_driver": in_driver,
        "storage": storage_report(stats, cache, out),
    }
    write_json(out / MANIFEST, manifest)
    remove_stale_outputs(out, manifest["files"])
    remove_temporaries(out, cache)
    return manifest
