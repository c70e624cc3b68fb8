"""Stage 2 on Mllama's aspect-ratio tiles from the CLI config (model.max_num_tiles): validation, a stage-1
file as the start, the flat batches through loss and eval, FLOPs, and `vlmforge train` on the recipe data
with resume and an export that transformers reads back with the same greedy captions."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train
from PIL import Image
from test_tiling import encode, random_image
from train_support import PYTHON, ROOT, clean_env, mixed_data, recipe_data

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import load_train_config
from vlmforge.training.data import SampleFormat, build_index, collate, heldout_rows, make_sample
from vlmforge.training.eval import batch_images
from vlmforge.training.flops import computed_counts, encoder_tokens_per_image
from vlmforge.training.metrics import read_metrics
from vlmforge.training.model.config import get_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.tiling import load_tiled_image, pad_tiles
from vlmforge.training.optim import param_groups
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.train import model_config
from vlmforge.training.vlm import evaluate_weights, sample_format
from vlmforge.training.vlm import loss as vlm_loss
from vlmforge.training.weights import load_chain, load_fusion_model, save_tensors

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIG = "configs/train/stage2_tiles.yaml"
TILE_GATES = (
    "encoder.pre_tile_embedding.gate",
    "encoder.tile_position_embedding.gate",
    "projection.post_tile_embedding.gate",
)


def test_config_validates_max_num_tiles():
    cfg = load_train_config(CONFIG, [])
    assert cfg.model.max_num_tiles == 4
    mc = model_config(cfg)
    assert mc.vision.max_num_tiles == 4 and mc.vision.image_size == 32 and mc.vision.num_views == 1
    assert model_config(load_train_config("configs/train/stage1.yaml", [])).vision.max_num_tiles == 1
    for overrides, reason in (
        (["task=clip"], "task vlm only"),
        (["model.tile_grid=2"], "two ways of tiling"),
        (["data.packing=true"], "data.packing"),
        (["model.max_num_tiles=0"], "model.max_num_tiles"),
    ):
        with pytest.raises(ConfigError, match=reason):
            load_train_config(CONFIG, overrides)


def tiled_batch(size: int = 32) -> dict:
    """A loader batch of three rows: a wide image (1x3 tiles), no image, a square one (2x2)."""
    fmt = SampleFormat(
        bos_id=0, eos_id=1, image_token_id=512, image_size=size, max_tokens=16,
        encode=lambda text: [5 + len(w) for w in text.split()], max_num_tiles=4,
    )  # fmt: skip
    rows = [
        {"id": "a", "image": encode(random_image(40, 90)), "caption": "a wide one"},
        {"id": "b", "image": None, "caption": "no image here"},
        {"id": "c", "image": encode(random_image(64, 64)), "caption": "a square one"},
    ]
    return collate([make_sample(r, fmt, np.random.default_rng(0)) for r in rows], 1, size, max_num_tiles=4)


def test_batch_images_pads_tiles_and_shuffles_whole_images():
    batch = tiled_batch()
    assert batch["num_tiles"].tolist() == [3, 0, 4] and batch["max_num_tiles"] == 4
    plain = batch_images(batch)
    pixels, mask = pad_tiles(batch["images"], batch["num_tiles"], 4)
    assert torch.equal(plain["images"], pixels) and torch.equal(plain["aspect_ratio_mask"], mask)
    shuffled = batch_images(batch, shuffle=True)
    for row, source in ((0, 2), (1, 0), (2, 1)):  # every row gets the previous row's image, all of it
        assert torch.equal(shuffled["images"][row], pixels[source])
        assert shuffled["aspect_ratio_ids"][row] == batch["aspect_ratio_ids"][source]
        assert torch.equal(shuffled["aspect_ratio_mask"][row], mask[source])
    # single-tile batches: the images as they are (rolled when shuffled), no tile inputs
    images = torch.randn(3, 3, 8, 8)
    assert batch_images({"images": images}) == {"images": images}
    assert torch.equal(batch_images({"images": images}, shuffle=True)["images"], images.roll(1, dims=0))


def test_flops_count_every_tile_the_encoder_runs():
    vision = dataclasses.replace(get_config("tiny").vision, max_num_tiles=4)
    per_image = encoder_tokens_per_image(vision)
    assert per_image == 4 * vision.num_tokens
    assert encoder_tokens_per_image(get_config("tiny").vision) == get_config("tiny").vision.num_tokens
    batch = tiled_batch()  # 3 rows, each padded to 4 tiles on the device (the empty row too)
    counts = computed_counts(batch, vision)
    assert counts["image"] == 3 * 4 * vision.num_tokens
    assert counts["image_pairs"] == 3 * (4 * vision.num_tokens) ** 2  # the global attention spans the tiles


def test_tile_gates_train_with_the_gate_lr_scale():
    cfg = get_config("tiny")
    cfg.vision = dataclasses.replace(cfg.vision, max_num_tiles=4)
    model = FusionModel(cfg)
    gates = next(g for g in param_groups(model, 0.05, gate_lr_scale=10) if g.get("lr_scale") == 10)
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(TILE_GATES) <= {names[id(p)] for p in gates["params"]}
    assert not any("tile" in names[id(p)] and not names[id(p)].endswith("gate") for p in gates["params"])


def stage1_file(path: Path, seed: int = 0) -> Path:
    """A stage-1 (single-tile) weights file as a vlm run writes it, with the adapters' gates open."""
    torch.manual_seed(seed)
    model = FusionModel(get_config("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn_gate", "mlp_gate")):
                p.fill_(1.0)
    save_tensors(dict(model.state_dict()), path, model.config, [])
    return path


def test_a_stage1_file_starts_the_tiled_model(tmp_path):
    """init_from a single-tile file: every tensor loads, the tile tables stay fresh behind closed gates, and
    a 1x1 image gives nearly stage 1's logits (not exactly: Mllama's real tokens also attend to the padding
    tiles)."""
    path = stage1_file(tmp_path / "stage1.safetensors")
    stage1 = load_fusion_model(path).eval()
    vision = dataclasses.replace(stage1.config.vision, max_num_tiles=4)
    tiled = FusionModel(dataclasses.replace(stage1.config, vision=vision)).eval()
    load_chain(tiled, path, strict_names=True)
    ours = dict(tiled.named_parameters())
    for name, p in stage1.named_parameters():
        assert torch.equal(ours[name], p), name
    assert all(ours[g].item() == 0.0 for g in TILE_GATES)

    tiles = load_tiled_image(encode(random_image(32, 32)), 32, 4)
    assert tiles.grid == (1, 1)
    ids = torch.tensor([[512, 0, *range(5, 20)]])
    pixels, mask = pad_tiles(tiles.tiles, torch.tensor([1]), 4)
    with torch.no_grad():
        want = stage1(ids, tiles.tiles).logits
        got = tiled(ids, pixels, aspect_ratio_ids=torch.tensor([1]), aspect_ratio_mask=mask).logits
        no_image = stage1(ids).logits
    image_effect = (want - no_image).abs().max().item()
    diff = (got - want).abs().max().item()
    print(f"1x1 image, tiled model fresh from stage 1 vs stage 1: max abs logit diff {diff:.2e} "
          f"(the image changes logits by up to {image_effect:.2e})")  # fmt: skip
    assert 0 < diff < 0.1 * image_effect


# ------------------------------------------------------------------------------- vlmforge train on tiles

STEPS = 6
RUN = [
    f"train.steps={STEPS}", "train.micro_batch_size=8", "optim.warmup_steps=1", "optim.lr=1e-3",
    "eval.max_rows=16", "eval.micro_batch_size=8", "data.image_first=true", "train.save_every=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiles_run(tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("tiles")
    init = stage1_file(root / "stage1.safetensors")
    try:
        result = train(CONFIG, root / "stage2", f"model.init_from=[{init}]", *RUN)
    finally:
        torch.set_num_threads(threads)
    return {"result": result, "init": init, "root": root}


@pytest.mark.slow
def test_stage2_on_tiles_trains_evaluates_and_resumes(tiles_run):
    result, init, root = tiles_run["result"], tiles_run["init"], tiles_run["root"]
    s = result.summary
    model = result.engine.module
    assert model.config.vision.max_num_tiles == 4
    out = result.output
    train_log = read_metrics(out / "metrics.jsonl", "train")
    losses = [r["loss"] for r in train_log]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    before, after = s["eval_before"], s["eval_after"]
    print(f"tiles run: train loss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out {before} -> {after}")
    assert after["loss"] < before["loss"]
    assert np.isfinite(after["loss_shuffled"]) and after["loss_shuffled"] != after["loss"]
    assert any(model.get_parameter(g).item() != 0 for g in TILE_GATES)  # the tile tables start to open
    # `vlmforge eval` on the weights file: the run's own final figures
    curated, tokenizer = recipe_data()
    sets = [f"data.path={curated}", f"tokenizer={tokenizer}", *RUN]
    assert evaluate_weights(CONFIG, out / "model.safetensors", sets) == pytest.approx(after, rel=1e-5)

    # resume from step 3: the same losses for steps 4..6
    resumed = root / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step{STEPS:07d}")
    (resumed / "checkpoints" / "latest").write_text("step0000003")
    threads = torch.get_num_threads()
    try:
        from vlmforge.training.train import run

        overrides = [f"data.path={curated}", f"tokenizer={tokenizer}", f"train.output={resumed}",
                     "train.progress=false", "eval.every=0", f"model.init_from=[{init}]", *RUN]  # fmt: skip
        run(load_train_config(CONFIG, overrides), resume=True)
    finally:
        torch.set_num_threads(threads)
    again = [r["loss"] for r in read_metrics(resumed / "metrics.jsonl", "train")]
    assert again[3:] == pytest.approx(losses[3:], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_exported_stage2_gives_transformers_the_same_greedy_captions(tiles_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from vlmforge.training.model.fusion import media_attention_mask
    from vlmforge.training.model.hf import export_mllama

    out = tiles_run["result"].output
    model = load_fusion_model(out / "model.safetensors").eval()
    curated, tokenizer = recipe_data()
    sets = [f"data.path={curated}", f"tokenizer={tokenizer}", "data.image_first=true"]
    cfg = load_train_config(CONFIG, sets)
    tok = TextTokenizer(tokenizer)
    fmt = sample_format(cfg, model.config, tok)
    # Held-out images at 32-128 px: at 4 tiles of 32 px the recipe's own (128-384 px, aspect 1:2 to 2:1)
    # all fit the 2x2 grid best; resized, they fall into five grids.
    shapes = [(32, 32), (96, 32), (32, 64), (64, 64), (128, 32), (32, 96)]  # (width, height)
    rows = heldout_rows(build_index(curated, "heldout", cfg.data.heldout_fraction), len(shapes))
    for row, shape in zip(rows, shapes, strict=True):
        with Image.open(io.BytesIO(row["image"])) as img:
            row["image"] = encode(img.convert("RGB").resize(shape))
    samples = [make_sample(r, fmt, np.random.default_rng(0)) for r in rows]
    grids = [s.tiled.grid for s in samples]
    assert grids == [(1, 1), (1, 3), (2, 1), (2, 2), (1, 4), (3, 1)]
    batch = collate(samples, fmt.eos_id, fmt.image_size, max_num_tiles=4)
    prompt = torch.tensor([samples[0].input_ids[:4]] * len(samples))  # <|image|><|begin_of_text|> + 2 words
    inputs = batch_images(batch)
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=8, **inputs)
        # the trainer's loss is the model's on the padded tiles
        assert vlm_loss(model, batch).item() == pytest.approx(
            model(batch["input_ids"], labels=batch["labels"], **inputs).loss.item()
        )
    assert len({tuple(r) for r in ours[:, 4:].tolist()}) > 1, "captions do not depend on the image"

    export_mllama(model, tmp_path)
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    hf.generation_config.eos_token_id = None  # ours runs max_new_tokens too
    cross = media_attention_mask(prompt, model.config.image_token_id, 1)[..., None] & inputs[
        "aspect_ratio_mask"
    ][:, None, None].bool()
    with torch.no_grad():
        theirs = hf.generate(
            input_ids=prompt,
            pixel_values=inputs["images"][:, None],
            aspect_ratio_ids=inputs["aspect_ratio_ids"][:, None],
            aspect_ratio_mask=inputs["aspect_ratio_mask"][:, None],
            cross_attention_mask=cross.long(),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=fmt.eos_id,
        )
    print(f"grids {grids}; greedy captions:", [tok.decode(r[4:]) for r in ours.tolist()])
    assert torch.equal(ours, theirs)
    assert json.loads((tmp_path / "config.json").read_text())["vision_config"]["max_num_tiles"] == 4


@pytest.mark.slow
def test_tiles_on_two_ranks_under_zero3_match_zero2(tmp_path):
    """2 CPU ranks, one reading a shard of images and the other the same captions without images, so
    each step one rank has no image to tile (ZeRO-3 hangs if ranks run different layers): ZeRO-3's losses
    equal ZeRO-2's."""
    curated, tokenizer = recipe_data()
    init = stage1_file(tmp_path / "stage1.safetensors")
    losses = {}
    for zero in ("zero2", "zero3"):
        out = tmp_path / zero
        sets = [f"data.path={mixed_data()}", f"tokenizer={tokenizer}", f"train.output={out}",
                f"model.init_from=[{init}]", f"train.deepspeed=configs/deepspeed/{zero}.json",
                "data.subset=null", "data.heldout_fraction=0", "data.num_workers=1", "data.shuffle_buffer=16",
                "train.progress=false", "train.save_every=0", *RUN, "train.steps=3"]  # fmt: skip
        cmd = [PYTHON, "-m", "vlmforge.pipeline.cli", "train", CONFIG, "--nproc", "2"]
        cmd += [x for s in sets for x in ("--set", s)]
        proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-4000:]
        losses[zero] = [r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["zero_stage"] == int(zero[-1]) and summary["world_size"] == 2
    print(f"tiles on 2 ranks: ZeRO-2 {losses['zero2']}, ZeRO-3 {losses['zero3']}")
    assert len(losses["zero3"]) == 3 and all(np.isfinite(losses["zero3"]))
    assert losses["zero3"] == pytest.approx(losses["zero2"], rel=1e-4)
