"""Example pairs for the report's gallery, read without touching the images of unsampled rows.

Kept pairs: the `id` column of every data shard is read, ids are ranked by a stable hash
(`thumbnails.sample_order`), and only the row groups holding the first few are read with their `image`
column; only those images are decoded. Rejected pairs: `rejected/` holds a thumbnail for a bounded sample
per reason (written by the stages), so no image is decoded at all.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.storage import Location, location, parquet_file
from vlmforge.pipeline.report.stats import rejected_table
from vlmforge.pipeline.report.thumbnails import make_thumbnail, sample_order

KEPT_COLUMNS = ["id", "image", "caption", "width", "height", "lang", "clip_score", "dup_cluster_size",
                "ocr_text"]


@dataclass
class Example:
    """One pair as the gallery shows it."""

    id: str
    caption: str | None
    thumbnail: bytes | None
    meta: list[str] = field(default_factory=list)
    note: str | None = None  # a rejection reason and detail, or OCR text
    note_tone: str = "warn"  # "warn" (rejections) or "info"


@dataclass
class KeptIndex:
    """The kept ids of an output, file by file, so a sampled row can be found by (file, row group)."""

    files: list[Location]
    ids: pa.ChunkedArray  # one chunk per file, in file order
    row_groups: list[np.ndarray]  # per file: cumulative row counts at the start of each row group

    @classmethod
    def read(cls, out_dir: str | Path, manifest: dict) -> KeptIndex:
        files = [location(out_dir) / f for f in manifest["files"]["data"]]
        chunks, starts = [], []
        for f in files:
            pf = parquet_file(f)
            chunks.extend(pf.read(columns=["id"]).column("id").chunks or [pa.array([], pa.string())])
            md = pf.metadata
            starts.append(np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)]))
        ids = pa.chunked_array(chunks, pa.string()) if chunks else pa.chunked_array([], pa.string())
        return cls(files, ids, starts)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(file, row group, row within it) of the `index`-th kept row."""
        for f, starts in enumerate(self.row_groups):
            if index < starts[-1]:
                rg = int(np.searchsorted(starts, index, side="right")) - 1
                return f, rg, index - int(starts[rg])
            index -= int(starts[-1])
        raise IndexError(index)


def _meta(r: dict) -> list[str]:
    """Short facts about a kept row for its gallery card."""
    meta = [f"{r['width']}×{r['height']}" if r.get("width") else "", r.get("lang") or ""]
    if r.get("clip_score") is not None:
        meta.append(f"align {r['clip_score']:.2f}")
    if (r.get("dup_cluster_size") or 1) > 1:
        meta.append(f"{r['dup_cluster_size']} in dup cluster")
    return [m for m in meta if m]


def kept_examples(index: KeptIndex, n: int, mask: np.ndarray | None = None) -> list[Example]:
    """Up to `n` kept pairs (restricted to `mask` when given), chosen by id hash; decodes only those."""
    if n <= 0 or len(index.ids) == 0:
        return []
    ids = index.ids.to_pylist()
    order = sample_order(ids)
    if mask is not None:
        order = order[mask[order]]
    picks = sorted(int(i) for i in order[:n])
    by_group: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for rank, i in enumerate(picks):
        f, rg, row = index.locate(i)
        by_group[(f, rg)].append((rank, row))
    found: dict[int, Example] = {}
    for (f, rg), rows in by_group.items():
        pf = parquet_file(index.files[f])
        cols = [c for c in KEPT_COLUMNS if c in pf.schema_arrow.names]
        table = pf.read_row_group(rg, columns=cols)
        for rank, row in rows:
            r = table.slice(row, 1).to_pylist()[0]
            found[rank] = Example(r["id"], r.get("caption"), make_thumbnail(r.get("image")), _meta(r),
                                  f"OCR: {r['ocr_text']}" if r.get("ocr_text") else None, "info")
    by_order = {i: rank for rank, i in enumerate(picks)}
    ranked = [by_order[int(i)] for i in order[:n]]
    return [found[r] for r in ranked]


def rejected_examples(out_dir: str | Path, manifest: dict, per_reason: int) -> dict[str, list[Example]]:
    """Up to `per_reason` rejected pairs per "stage/reason", those with a stored thumbnail first."""
    t = rejected_table(out_dir, manifest, ["id", "stage", "reason", "thumbnail"]) if per_reason > 0 else None
    if t is None or t.num_rows == 0:
        return {}
    keys = pc.dictionary_encode(pc.binary_join_element_wise(t["stage"], t["reason"], "/")).combine_chunks()
    order = sample_order(t["id"].to_pylist())
    codes = keys.indices.to_numpy(zero_copy_only=False)[order]
    has = t["thumbnail"].is_valid().to_numpy(zero_copy_only=False)[order]
    picked: dict[str, list[int]] = {}
    for code, key in enumerate(keys.dictionary.to_pylist()):
        mine = codes == code
        with_thumb, without = order[mine & has], order[mine & ~has]
        picked[key] = [int(i) for i in np.concatenate([with_thumb, without])[:per_reason]]
    rows = pa.array([i for v in picked.values() for i in v], pa.int64())
    ids = t["id"].take(rows).combine_chunks()
    extra = rejected_table(out_dir, manifest, ["id", "detail", "caption"], pc.field("id").isin(ids))
    info = {r["id"]: r for r in extra.to_pylist()}
    thumbs = t["thumbnail"]
    out: dict[str, list[Example]] = {}
    for k, idx in picked.items():
        out[k] = []
        for i in idx:
            rid = t["id"][i].as_py()
            r = info.get(rid, {})
            out[k].append(Example(rid, r.get("caption"), thumbs[i].as_py(), [], r.get("detail")))
    return out


def rejected_reasons(out_dir: str | Path, manifest: dict, ids: pa.Array) -> dict[str, str]:
    """For each of `ids` that the run at `out_dir` rejected: "stage/reason: detail" (or "stage/reason")."""
    if len(ids) == 0:
        return {}
    t = rejected_table(out_dir, manifest, ["id", "stage", "reason", "detail"], pc.field("id").isin(ids))
    if t is None:
        return {}
    return {
        i: f"{s}/{r}: {d}" if d else f"{s}/{r}"
        for i, s, r, d in zip(*(t[c].to_pylist() for c in ("id", "stage", "reason", "detail")), strict=True)
    }
