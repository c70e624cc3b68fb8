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
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
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


def tar_rows(raw_dir: Path, keep: Callable[[str], bool] = lambda key: True) -> list[dict]:
    """The pairs of the webdataset shards in `raw_dir` whose key `keep` accepts, as OUTPUT_SCHEMA dicts
    (what curation would keep; ``clip_score`` a stand-in hash of the key)."""
    return [row for tar_path in sorted(raw_dir.glob("*.tar")) for row in shard_rows(tar_path, keep)]


def shard_rows(tar_path: Path, keep: Callable[[str], bool] = lambda key: True) -> list[dict]:
    """`tar_rows` of one shard."""
    rows = []
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    for key, files in members.items():
        if not keep(key):
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


def clean_rows(raw_dir: Path, n: int, seed: int) -> list[dict]:
    """The clean rows of `n` sample pairs as OUTPUT_SCHEMA dicts (what curation would keep)."""
    write_sample_data(raw_dir, n, seed)
    kinds = {key: row["kind"] for key, row in read_ground_truth(raw_dir).items()}
    return tar_rows(raw_dir, lambda key: kinds.get(key) == "clean")


def write_curated(out_dir: Path, shards: list[list[dict]], row_group_rows: int = 100) -> Path:
    """Write each list of rows as one curated shard (OUTPUT_SCHEMA, then the rows' other columns, e.g. the
    sample clips' ``time_spans``) plus a manifest."""
    for i, rows in enumerate(shards):
        write_part(out_dir, i, rows, row_group_rows)
    return write_manifest(out_dir, sum(map(len, shards)))


def write_part(out_dir: Path, i: int, rows: list[dict], row_group_rows: int = 100) -> None:
    """Rows as the curated shard out_dir/data/part-<i>.parquet (`write_curated`'s columns)."""
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    given = pa.Table.from_pylist(rows)
    table = conform(given, OUTPUT_SCHEMA)
    for name in given.column_names:
        if name not in OUTPUT_SCHEMA.names:
            table = table.append_column(name, given.column(name))
    pq.write_table(table, data / f"part-{i:05d}.parquet", row_group_size=row_group_rows)


def write_manifest(out_dir: Path, rows: int) -> Path:
    """The manifest of a curated output of `rows` rows."""
    (out_dir / "manifest.json").write_text(json.dumps({"output": {"rows": rows}}))
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


# Tiny random transformers checkpoints (the vocabulary of recipe_data's tokenizer: 512 ids, BOS 0, EOS 1,
# <|image|> 512), written as HF writes them, in several safetensors shards with an index file.
HF_VOCAB = 512
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@functools.cache
def tiny_hf_dirs() -> dict[str, Path]:
    """{"llama", "clip", "siglip", "mllama"}: a LlamaForCausalLM (GQA, llama3 RoPE, tied embeddings),
    a CLIPVisionModel and a SiglipVisionModel at 32 px and an MllamaForConditionalGeneration (single
    tile, 32 px, adapter gates open, so images change the logits) from the same seed each time."""
    import torch
    import transformers

    root = workdir() / "hf"
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=HF_VOCAB,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            rope_scaling=LLAMA3_ROPE,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=None,
        )
    )
    llama.save_pretrained(root / "llama", max_shard_size="200KB")
    tower = dict(  # the CLIP and SigLIP towers' shapes
        hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, image_size=32,
        patch_size=8,
    )  # fmt: skip
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**tower))
    clip.save_pretrained(root / "clip", max_shard_size="100KB")
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**tower))
    siglip.save_pretrained(root / "siglip", max_shard_size="100KB")
    mllama = transformers.MllamaForConditionalGeneration(
        transformers.MllamaConfig(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_global_layers=2,
                attention_heads=4,
                image_size=32,
                patch_size=8,
                max_num_tiles=1,
                supported_aspect_ratios=[[1, 1]],
                intermediate_layers_indices=[1, 3],
                vision_output_dim=96,
            ),
            text_config=dict(
                vocab_size=HF_VOCAB,
                hidden_size=48,
                intermediate_size=80,
                num_hidden_layers=6,  # 4 self-attention blocks and cross-attention before blocks 1 and 3
                cross_attention_layers=[1, 4],
                num_attention_heads=4,
                num_key_value_heads=2,
                rope_theta=10000.0,
                rope_scaling=LLAMA3_ROPE,
                max_position_embeddings=256,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=None,
            ),
            image_token_index=HF_VOCAB,
        )
    )
    with torch.no_grad():
        for name, p in mllama.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(0.5)
    mllama.save_pretrained(root / "mllama", max_shard_size="200KB")
    names = ("llama", "clip", "siglip", "mllama")
    for name in names:
        assert (root / name / "model.safetensors.index.json").is_file(), name  # sharded
    return {name: root / name for name in names}


def kill_at_first_checkpoint(
    cmd: list[str], out: Path, env: dict[str, str], timeout: float, steps: int
) -> int:
    """Start the training `cmd` writing into `out`, SIGKILL its whole process group as soon as it has written
    its first checkpoint, and return that checkpoint's step (checked to be before the last of `steps`)."""
    log = out / "killed.log"
    with log.open("w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        killed = subprocess.Popen(
            cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.monotonic() + timeout
    try:
        while not (out / "checkpoints" / "latest").exists():
            assert killed.poll() is None, "ended before its first checkpoint: " + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.01)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    resumed_from = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert resumed_from < steps
    return resumed_from


def open_tiled_model(max_num_tiles: int = 4):
    """The tiny preset with Mllama tiles, seeded, every gate opened to 1 so the image path reaches the
    logits (a fresh model's zero gates would hide it)."""
    import dataclasses

    import torch

    from vlmforge.training.model.config import get_config
    from vlmforge.training.model.fusion import FusionModel

    cfg = get_config("tiny")
    cfg.vision = dataclasses.replace(cfg.vision, max_num_tiles=max_num_tiles)
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(1.0)
    return model
