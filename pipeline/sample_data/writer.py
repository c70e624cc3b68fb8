"""Writes the rows as img2dataset-style webdataset shards plus the ground truth files."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vlmforge.common.files import write_bytes

from .generator import EXPECTED, PROPORTIONS, SHORT_CAPTION_SHARE, Row, generate_rows

if TYPE_CHECKING:
    from vlmforge.pipeline.evaluate.heldout import PairKeys

TAR_MTIME = 1_700_000_000  # fixed member mtime, so the same run gives byte-identical shards
GENERATOR_VERSION = 1


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add `data` as a regular file with fixed metadata (byte-identical shards for the same content)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _sample_json(row: Row) -> bytes:
    meta = {
        "url": row.url, "key": row.key, "status": "success", "error_message": None,
        "width": row.width, "height": row.height, "caption": row.caption,
    }
    return json.dumps(meta).encode()


def _write_shard(path: Path, rows: list[Row]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            add_member(tar, f"{row.key}.{row.ext}", row.data)
            add_member(tar, f"{row.key}.json", _sample_json(row))
            add_member(tar, f"{row.key}.txt", row.caption.encode("utf-8"))
    write_bytes(path, buf.getvalue())


def _summary(n: int, seed: int, shard_size: int, shards: list[str], truth: list[dict]) -> dict:
    kinds = Counter(t["kind"] for t in truth)
    counts = {k: kinds.get(k, 0) for k in PROPORTIONS}
    langs = Counter(t["lang"] for t in truth if t["kind"] == "non_english")

    def short_share(kind: str) -> float | None:
        rows = [t for t in truth if t["kind"] == kind]
        return round(sum(1 <= t["n_words"] <= 4 for t in rows) / len(rows), 4) if rows else None

    return {
        "generator_version": GENERATOR_VERSION, "n": n, "seed": seed, "shard_size": shard_size,
        "shards": shards, "counts": counts,
        "proportions": {k: round(c / n, 4) if n else 0.0 for k, c in counts.items()},
        "target_proportions": dict(PROPORTIONS),
        "expected": {k: {"stage": s, "reason": r} for k, (s, r) in EXPECTED.items()},
        "languages": dict(sorted(langs.items())),
        "variants": dict(sorted(Counter(t["variant"] for t in truth if t["variant"]).items())),
        "short_caption_share": {"target": SHORT_CAPTION_SHARE, "clean": short_share("clean"),
                                "non_english": short_share("non_english")},
        "text_in_image": sum(t["text_in_image"] is not None for t in truth),
    }


def _write_shards(out: Path, rows: Iterable[Row], n: int, shard_size: int, progress: bool) -> list[str]:
    """Rows in tar shards of `shard_size`; shards of an earlier, larger run in `out` are removed."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    batch: list[Row] = []
    for i, row in enumerate(rows):
        batch.append(row)
        if len(batch) == shard_size or i == n - 1:
            name = f"{len(shards):05d}.tar"
            _write_shard(out / name, batch)
            shards.append(name)
            batch = []
            if progress:
                print(f"sample-data: {i + 1}/{n} rows, {name}", file=sys.stderr, flush=True)
    for stale in out.glob("[0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in shards:
            stale.unlink()
    return shards


def write_sample_data(out_dir: str | Path, n: int, seed: int = 0, shard_size: int = 500,
                      progress: bool = False) -> dict:
    """Writes n pairs; returns the summary dict (also written as out_dir/ground_truth_summary.json).

    Shards of an earlier run in out_dir that this run does not rewrite are removed."""
    if n < 0 or not 1 <= shard_size <= 10_000:
        raise ValueError("need n >= 0 and 1 <= shard_size <= 10000 (keys hold 4 digits per shard)")
    out = Path(out_dir)
    truth: list[dict] = []

    def rows() -> Iterator[Row]:
        for row in generate_rows(n, seed, shard_size):
            truth.append(row.ground_truth())
            yield row

    shards = _write_shards(out, rows(), n, shard_size, progress)
    lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth)
    write_bytes(out / "ground_truth.jsonl", lines.encode("utf-8"))
    summary = _summary(n, seed, shard_size, shards, truth)
    write_bytes(out / "ground_truth_summary.json",
                  (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return summary


def write_eval_set(out_dir: str | Path, n: int, seed: int = 0, shard_size: int = 500,
                   exclude: PairKeys | None = None, progress: bool = False) -> dict:
    """Writes n labelled held-out pairs (shards, labels.jsonl, eval_summary.json); returns the summary.

    `exclude`: the keys of training sets no eval pair may share an image hash or normalised caption with."""
    from vlmforge.pipeline.evaluate.heldout import LABELS_FILE

    from .eval_set import generate_eval_rows

    if n < 2 or not 1 <= shard_size <= 10_000:
        raise ValueError("an eval set needs n >= 2 and 1 <= shard_size <= 10000")
    out = Path(out_dir)
    labels: list[dict] = []

    def rows() -> Iterator[Row]:
        for row, label in generate_eval_rows(n, seed, exclude):
            labels.append({"id": row.key, "label": label})
            yield row

    shards = _write_shards(out, rows(), n, shard_size, progress)
    lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in labels)
    write_bytes(out / LABELS_FILE, lines.encode("utf-8"))
    summary = {
        "generator_version": GENERATOR_VERSION, "kind": "eval", "n": n, "seed": seed,
        "shard_size": shard_size, "shards": shards,
        "classes": dict(sorted(Counter(t["label"] for t in labels).items())),
        "excluded": {"images": len(exclude.images), "captions": len(exclude.captions)} if exclude else None,
    }
    write_bytes(out / "eval_summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
