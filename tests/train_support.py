"""Shared builders for the training tests (no tests here): curated-style Parquet from the sample data.

The datasets are built once per test session (cached in a temporary directory), whichever test file
asks first.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import ROOT
from PIL import Image

from vlmforge.pipeline.sample_data import write_sample_data
from vlmforge.pipeline.sample_data.reading import read_ground_truth
from vlmforge.pipeline.schema import OUTPUT_SCHEMA, conform

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else "python"


@functools.cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="vlmforge-train-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def score(row_id: str) -> float:
    """A stand-in alignment score in [0, 1), stable per id."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big") / 2**32


def clean_rows(raw_dir: Path, n: int, seed: int) -> list[dict]:
    """The clean rows of `n` sample pairs as OUTPUT_SCHEMA dicts (what curation would keep)."""
    write_sample_data(raw_dir, n, seed)
    kinds = {key: row["kind"] for key, row in read_ground_truth(raw_dir).items()}
    rows = []
    for tar_path in sorted(raw_dir.glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, files in members.items():
            if kinds.get(key) != "clean":
                continue
            ext = next(e for e in files if e not in ("json", "txt"))
            with Image.open(io.BytesIO(files[ext])) as img:
                fmt, (w, h) = img.format, img.size
            caption = files["txt"].decode()
            rows.append(
                {
                    "id": key,
                    "image": files[ext],
                    "image_format": fmt,
                    "width": w,
                    "height": h,
                    "caption": caption,
                    "original_caption": caption,
                    "lang": "en",
                    "caption_words": len(caption.split()),
                    "clip_score": score(key),
                    "source": f"{tar_path.name}/{key}",
                }
            )
    return rows


def write_curated(out_dir: Path, shards: list[list[dict]], row_group_rows: int = 100) -> Path:
    """Write each list of rows as one curated shard (OUTPUT_SCHEMA) plus a manifest."""
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(shards):
        table = conform(pa.Table.from_pylist(rows), OUTPUT_SCHEMA)
        pq.write_table(table, data / f"part-{i:05d}.parquet", row_group_size=row_group_rows)
    (out_dir / "manifest.json").write_text(json.dumps({"output": {"rows": sum(map(len, shards))}}))
    return out_dir


@functools.cache
def sample_rows() -> tuple[dict, ...]:
    return tuple(clean_rows(workdir() / "raw", 4000, seed=0))


@functools.cache
def recipe_data() -> tuple[Path, Path]:
    """(curated dir, tokenizer.json): ~2,400 clean sample pairs in shards of 400 rows, and a 512-id BPE."""
    from vlmforge.training.tokenizer import caption_texts, train_tokenizer

    rows = list(sample_rows())
    curated = write_curated(workdir() / "curated", [rows[i : i + 400] for i in range(0, len(rows), 400)])
    tokenizer = workdir() / "tokenizer.json"
    train_tokenizer(caption_texts(curated), 512, tokenizer)
    return curated, tokenizer


@functools.cache
def mixed_data() -> Path:
    """Two shards of 48 rows: the first with images, the second the same captions without images."""
    rows = [dict(r) for r in sample_rows()[:48]]
    text_only = [{**r, "id": r["id"] + "-text", "image": None, "image_format": None} for r in rows]
    return write_curated(workdir() / "mixed", [rows, text_only], row_group_rows=16)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the variables of an in-process distributed run, CPU DeepSpeed, 1 thread."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env
