"""Phase 1: a streaming map over input parts: text checks, language ID, dedup keys, image decode (with the
perceptual hash), MinHash signatures.

Text checks run before any image is decoded; each surviving image is decoded once. Each part's kept rows,
rejected rows and stats are written atomically under the part's cache key (its input and phase 1's config);
the stats file is written last and marks the part done, so a re-run, or a run whose config changed only in
later phases, skips finished parts. The costly measurements (fastText's predictions, image decodes and
hashes, MinHash signatures) are also kept per row, keyed by the row's ordinal in its input part, so a run
whose phase-1 thresholds changed re-decides from them without a model call or a decode.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from vlmforge.common.files import AtomicParquetWriter, read_json, write_json
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.cache.row_cache import RowCache
from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.engine.accounting import StageStats, merge_stage_stats
from vlmforge.pipeline.engine.executor import cluster_cpus, map_units
from vlmforge.pipeline.filter.base import MeasuredStage, Stage
from vlmforge.pipeline.filter.caption_checks import CaptionChecks
from vlmforge.pipeline.filter.dedup_keys import DedupKeys
from vlmforge.pipeline.filter.image_decode import ImageDecode
from vlmforge.pipeline.filter.language_id import LanguageId
from vlmforge.pipeline.filter.read_check import ReadCheck
from vlmforge.pipeline.filter.signatures import MinHashSignatures
from vlmforge.pipeline.readers import read_part
from vlmforge.pipeline.readers.common import InputPart
from vlmforge.pipeline.registry import Context, PhaseResult
from vlmforge.pipeline.schema import PHASE1_SCHEMA, REJECTED_SCHEMA, conform


def build_stages(cfg: CurateConfig) -> list[Stage]:
    """The phase-1 stages in order, cheapest first."""
    if cfg.video.enabled:
        from vlmforge.pipeline.video.stages import build_video_stages

        stages = build_video_stages(cfg)
    else:
        stages = [ReadCheck(), CaptionChecks(cfg.caption)]
        if cfg.language.enabled:
            stages.append(LanguageId(cfg.language))
        stages += [DedupKeys(), ImageDecode(cfg.image, phash=cfg.near_dedup.image.enabled)]
        if cfg.near_dedup.caption.enabled:
            stages.append(MinHashSignatures(cfg.near_dedup.caption))
    for s in stages:
        s.rejected_caption_chars = cfg.output.rejected_caption_chars
        s.gallery_per_reason = cfg.output.gallery_per_reason
    return stages


def cached_result(part: InputPart, layout: Layout) -> dict | None:
    """The stats of a part phase 1 already ran with this config, or None."""
    done = read_json(layout.phase1(layout.parts[part.name])[2])
    return None if done is None else {**done, "part": part.name, "reused": True}


def run_part(part: InputPart, key: str, cfg: CurateConfig, stages: list[Stage], layout: Layout) -> dict:
    """Run phase 1 over one part and write its outputs under its cache `key`; returns the part's stats."""
    kept_path, rejected_path, stats_path = layout.phase1(key)
    if (done := cached_result(part, layout)) is not None:
        return done
    memos = {}
    for s in stages:
        s.stats = StageStats(s.name)
        if isinstance(s, MeasuredStage):
            s.memo = memos[s.name] = RowCache(layout.row_cache(s.name, key), s.measures, "row")
    out, rows = cfg.output, 0
    with (
        AtomicParquetWriter(kept_path, PHASE1_SCHEMA, out.compression, out.row_group_rows) as kept_w,
        AtomicParquetWriter(rejected_path, REJECTED_SCHEMA, out.compression, out.row_group_rows) as rej_w,
    ):
        for batch in read_batches(part, cfg):
            # The row's ordinal in its part keys the measurement caches (ids need not be unique).
            batch = batch.append_column("row", pa.array(range(rows, rows + batch.num_rows), pa.int64()))
            rows += batch.num_rows
            for stage in stages:
                batch, rejected = stage(batch)
                rej_w.write(rejected)
            batch = batch.append_column("part", pa.array([key] * batch.num_rows, pa.string()))
            kept_w.write(conform(batch, PHASE1_SCHEMA))
    for memo in memos.values():
        memo.save()
    stats = {"part": part.name, "stages": [s.stats.to_dict() for s in stages]}
    write_json(stats_path, stats)
    return {**stats, "reused": False}


def read_batches(part: InputPart, cfg: CurateConfig) -> Iterator[pa.Table]:
    """The part's raw batches: images by the input's reader, clips by the video readers."""
    if cfg.video.enabled:
        from vlmforge.pipeline.readers.video import read_video_part

        return read_video_part(part, cfg, cfg.ray.batch_rows)
    return read_part(part, cfg.input, cfg.ray.batch_rows)


class Phase1Worker:
    """Ray Data callable: loads the models once per actor, then runs whole parts."""

    def __init__(self, cfg_json: str, layout_json: str) -> None:
        self.cfg = CurateConfig.model_validate_json(cfg_json)
        self.layout = Layout.from_json(layout_json)
        self.stages = build_stages(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for unit in map(json.loads, batch.column("part").to_pylist()):
            part = InputPart.from_dict(unit)
            results.append(run_part(part, self.layout.parts[part.name], self.cfg, self.stages, self.layout))
        return pa.table({"result": [json.dumps(r) for r in results]})


def run(ctx: Context) -> PhaseResult:
    """Phase 1 over every input part not cached yet; the stages' stats summed over all parts."""
    layout, cfg = ctx.layout, ctx.cfg
    cached = {p.name: done for p in ctx.parts if (done := cached_result(p, layout)) is not None}
    todo = [p.to_dict() for p in ctx.parts if p.name not in cached]
    workers = cfg.ray.workers or cluster_cpus()
    ctx.log(
        f"phase 1: {len(todo)} of {len(ctx.parts)} parts to run ({len(cached)} cached), {workers} workers"
    )
    results = list(cached.values())
    if todo:
        kwargs = {"cfg_json": cfg.model_dump_json(), "layout_json": layout.to_json()}
        results += map_units(todo, Phase1Worker, kwargs, workers, ctx.progress)
    ran = merge_stage_stats([r for r in results if not r["reused"]])
    timing = {
        "parts": len(ctx.parts),
        "reused": sum(r["reused"] for r in results),
        # The work of this run alone (the stages also count parts taken from the cache)
        "counters": {s.name: dict(s.counters) for s in ran if s.counters},
    }
    return PhaseResult(stages=merge_stage_stats(results), timing=timing)
