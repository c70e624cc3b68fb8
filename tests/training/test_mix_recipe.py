"""benchmarks/mix_recipe.py's options: the split data/training runs, the stages' overrides, stored images."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import ROOT
from PIL import Image

from vlmforge.training.config import load_train_config
from vlmforge.training.data import load_image

sys.path.insert(0, str(ROOT / "benchmarks"))
import mix_recipe  # noqa: E402


def test_data_only_and_reuse_data_are_refused_together_and_missing_data_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        mix_recipe.parse_args(["--out", str(tmp_path), "--data-only", "--reuse-data", str(tmp_path)])
    assert "give one of them" in capsys.readouterr().err
    (tmp_path / "curated" / "web" / "data").mkdir(parents=True)
    with pytest.raises(SystemExit):
        mix_recipe.parse_args(["--out", str(tmp_path / "run"), "--reuse-data", str(tmp_path)])
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "curated/charts/data" in err and "curated/web/data" not in err


def test_every_stage_loads_as_a_train_config_with_its_options(tmp_path):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--preset", "small", "--image-size", "224", "--max-tokens", "192"]
    argv += ["--batch", "5", "6", "7", "8", "--workers", "3", "--set-all", "optim.warmup_steps=9"]
    argv += ["--set-clip", "optim.lr=0.0005"]
    args = mix_recipe.parse_args(argv)
    data = mix_recipe.data_paths(tmp_path)
    assert list(mix_recipe.stage_overrides(args, data, out)) == ["text_lm", "clip", "stage1"]
    args = mix_recipe.parse_args([*argv, "--stage2-steps", "11"])
    stages = mix_recipe.stage_overrides(args, data, out)
    cfgs = {name: load_train_config(ROOT / mix_recipe.CONFIGS[name], sets) for name, sets in stages.items()}
    assert [c.train.micro_batch_size for c in cfgs.values()] == [5, 6, 7, 8]
    assert [c.train.steps for c in cfgs.values()] == [500, 400, 1000, 11]
    for name, c in cfgs.items():
        assert (c.model.preset, c.data.max_tokens, c.optim.warmup_steps) == ("small", 192, 9)
        assert [s.label for s in c.data.sources] == list(mix_recipe.SOURCES)
        assert c.tokenizer == str(tmp_path / "tokenizer.json")
        if name != "text_lm":
            assert (c.model.image_size, c.data.num_workers) == (224, 3)
    assert cfgs["clip"].optim.lr == 0.0005 and cfgs["stage1"].optim.lr != 0.0005
    first = [str(out / "text_lm/model.safetensors"), str(out / "clip/encoder.safetensors")]
    assert cfgs["stage1"].model.init_from == first
    assert not cfgs["stage1"].model.trainable.encoder
    assert cfgs["stage2"].model.init_from == [str(out / "stage1/model.safetensors")]
    assert cfgs["stage2"].model.trainable.encoder


def test_stored_images_load_as_the_originals_do():
    """An image stored at the training size decodes to the tensor the loader makes from the original."""
    rng = np.random.default_rng(0)
    flat = np.zeros((120, 300, 3), np.uint8)
    flat[20:60, 40:200] = (200, 30, 30)  # flat colours: PNG is the smaller encoding, lossless
    noisy = rng.integers(0, 255, (120, 300, 3), dtype=np.uint8)  # noise: JPEG is smaller
    for pixels, fmt in ((flat, "PNG"), (noisy, "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        row = {"id": "a", "image": buf.getvalue(), "image_format": "PNG", "width": 300, "height": 120}
        for fast in (False, True):  # fast: a quicker PNG, the same pixels
            stored = mix_recipe.resized(row, 32, fast)
            assert (stored["image_format"], stored["width"], stored["height"]) == (fmt, 32, 32)
            original, again = load_image(row["image"], 32), load_image(stored["image"], 32)
            if fmt == "PNG":
                assert torch.equal(again, original)
            else:
                assert (again - original).abs().mean() < 0.2  # normalised units: JPEG quality 90 on noise


def test_web_chunks_split_the_pairs_and_keep_the_single_run_as_chunk_zero(tmp_path, capsys):
    assert mix_recipe.web_chunks(tmp_path, 10, 1) == [(tmp_path / "raw/web/00", 10, 0)]
    chunks = mix_recipe.web_chunks(tmp_path, 10, 4)
    assert [(n, seed) for _, n, seed in chunks] == [(3, 0), (3, 1), (3, 2), (1, 3)]
    assert len(mix_recipe.web_chunks(tmp_path, 0, 3)) == 0
    with pytest.raises(SystemExit):
        mix_recipe.parse_args(["--out", str(tmp_path), "--data-workers", "0"])
    assert "--data-workers must be positive" in capsys.readouterr().err


def curated_rows(root, name: str) -> list[dict]:
    files = sorted((root / "curated" / name / "data").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f, columns=["id", "caption", "width"]).to_pylist()]


def test_data_in_parallel_chunks_extends_the_single_run(tmp_path):
    """Two web chunks written by two processes: the first is the single seed-0 run's rows, the second's ids
    are prefixed (no id repeats), every source has its manifest's rows, and the tokenizer is written."""
    base = ["--data-only", "--n", "1", "--store-size", "16"]
    single, chunked = tmp_path / "single", tmp_path / "chunked"
    one = mix_recipe.write_data(single, mix_recipe.parse_args(["--out", str(single), "--web", "30", *base]))
    argv = ["--out", str(chunked), "--web", "60", "--web-chunks", "2", "--data-workers", "2", "--store-fast"]
    two = mix_recipe.write_data(chunked, mix_recipe.parse_args([*argv, *base]))
    web = curated_rows(chunked, "web")
    first = [r for r in web if not r["id"].startswith("01-")]
    assert first == curated_rows(single, "web") and len(first) < len(web)
    assert len({r["id"] for r in web}) == len(web) == two["rows"]["web"]
    assert two["rows"]["charts"] == one["rows"]["charts"] == 1 and {r["width"] for r in web} == {16}
    for name in mix_recipe.SOURCES:
        manifest = json.loads((chunked / "curated" / name / "manifest.json").read_text())
        assert manifest["output"]["rows"] == len(curated_rows(chunked, name)) == two["rows"][name]
    assert (chunked / "tokenizer.json").is_file()
