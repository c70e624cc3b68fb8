"""Phase 1 for video inputs: the image stages' contract and accounting, with the image decode replaced by
the video stage and the image dedup key by the clip's content hash."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from vlmforge.pipeline.config import CurateConfig
from vlmforge.pipeline.filter.base import Stage, Verdict
from vlmforge.pipeline.filter.caption_checks import CaptionChecks
from vlmforge.pipeline.filter.language_id import LanguageId
from vlmforge.pipeline.filter.read_check import ReadCheck
from vlmforge.pipeline.filter.signatures import MinHashSignatures
from vlmforge.pipeline.filter.text import caption_key
from vlmforge.pipeline.video.decode import VideoDecode


class VideoKeys(Stage):
    """Attaches `sha256` of the clip's bytes (exact duplicates) and `caption_key`; never rejects."""

    name = "dedup_keys"

    def decide(self, batch: pa.Table) -> Verdict:
        videos = batch.column("video").to_pylist()
        captions = batch.column("caption").to_pylist()
        return Verdict(
            reasons=[None] * batch.num_rows,
            columns={
                "sha256": pa.array([hashlib.sha256(v).hexdigest() for v in videos], pa.string()),
                "caption_key": pa.array([caption_key(c) for c in captions], pa.string()),
            },
        )


def build_video_stages(cfg: CurateConfig) -> list[Stage]:
    """The phase-1 stages of a video recipe, cheapest first: captions are judged before any clip is opened."""
    stages: list[Stage] = [ReadCheck(), CaptionChecks(cfg.caption)]
    if cfg.language.enabled:
        stages.append(LanguageId(cfg.language))
    stages += [VideoDecode(cfg.video), VideoKeys()]
    if cfg.near_dedup.caption.enabled:
        stages.append(MinHashSignatures(cfg.near_dedup.caption))
    return stages
