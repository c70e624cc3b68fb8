"""Mllama image processing (training/model/tiling.py) against transformers' MllamaImageProcessor, and the
flat tile batches of the loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import open_tiled_model
from transformers import MllamaImageProcessor

from vlmforge.training.data import SampleFormat, collate, make_sample
from vlmforge.training.model.config import CLIP_MEAN, CLIP_STD
from vlmforge.training.model.tiling import (
    BadImage,
    best_grid,
    collate_tiles,
    load_tiled_image,
    pad_tiles,
    supported_aspect_ratios,
    tile_image,
)

TILE = 28
# (height, width): square, wide 2:1, tall 1:2, very wide 4:1, tiny, huge, and odd sizes between grids
SIZES = [(50, 50), (40, 80), (80, 40), (30, 120), (3, 5), (900, 1300), (29, 57), (61, 30), (7, 200)]


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng([seed, height, width])
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def reference() -> MllamaImageProcessor:
    size = {"height": TILE, "width": TILE}
    return MllamaImageProcessor(size=size, max_image_tiles=4, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def test_aspect_ratios_follow_transformers_order():
    assert supported_aspect_ratios(4) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]
    assert supported_aspect_ratios(1) == [(1, 1)]


@pytest.mark.parametrize(("height", "width", "mode"), [(h, w, "RGB") for h, w in SIZES] + [(45, 70, "RGBA")])
def test_parity_with_transformers(reference, height, width, mode):
    img = random_image(height, width, mode)
    ours = tile_image(img, TILE, 4)
    theirs = reference.preprocess([[img]], return_tensors="pt")
    n = ours.num_tiles
    assert theirs["num_tiles"] == [[n]]
    assert ours.aspect_ratio_id == int(theirs["aspect_ratio_ids"][0, 0])
    padded, mask = pad_tiles(ours.tiles, torch.tensor([n]), 4)
    assert mask.tolist() == theirs["aspect_ratio_mask"][0].tolist()
    # same resize filter and arithmetic: the pixels are equal, padding tiles included
    torch.testing.assert_close(padded, theirs["pixel_values"][0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [(20, 20, (1, 1)), (40, 80, (1, 2)), (80, 40, (2, 1)), (25, 100, (1, 4)), (100, 25, (4, 1)),
     (50, 50, (2, 2))],
)
def test_grid_keeps_the_aspect_ratio(height, width, grid):
    # the least upscale that fits (50 x 50 -> 2 x 2 tiles of 28 px), else the least downscale, least area
    assert best_grid(height, width, 4, TILE) == grid
    tiled = tile_image(random_image(height, width), TILE, 4)
    assert tiled.grid == grid and tiled.tiles.shape == (grid[0] * grid[1], 3, TILE, TILE)


def test_wide_image_is_padded_not_stretched():
    # 30 x 100 px: a 1x4 canvas of 28 px tiles; scaled to 28 x 93 (aspect kept), padded on the right
    tiled = tile_image(Image.new("RGB", (100, 30), (255, 255, 255)), TILE, 4)
    pad = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    white = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    assert tiled.grid == (1, 4)
    canvas = torch.cat(list(tiled.tiles), dim=-1)  # (3, 28, 112)
    assert torch.allclose(canvas[:, :, :93], white.expand(3, TILE, 93))
    assert torch.allclose(canvas[:, :, 93:], pad.expand(3, TILE, 112 - 93))


def test_flat_collate_and_pad_tiles_round_trip():
    images = [tile_image(random_image(h, w, seed=i), TILE, 4) for i, (h, w) in enumerate(SIZES[:4])]
    batch = collate_tiles([images[0], None, images[1], images[2], images[3]], TILE)
    counts = [im.num_tiles for im in images]
    assert batch["num_tiles"].tolist() == [counts[0], 0, *counts[1:]]
    assert batch["tiles"].shape == (sum(counts), 3, TILE, TILE)  # real tiles only
    assert batch["aspect_ratio_ids"].tolist() == [images[0].aspect_ratio_id, 0] + [
        im.aspect_ratio_id for im in images[1:]
    ]
    padded, mask = pad_tiles(batch["tiles"], batch["num_tiles"], 4)
    assert padded.shape == (5, 4, 3, TILE, TILE)
    assert mask.sum(1).tolist() == batch["num_tiles"].tolist()
    for row, im in zip([0, 2, 3, 4], images, strict=True):
        assert torch.equal(padded[row, : im.num_tiles], im.tiles)
        assert not padded[row, im.num_tiles :].any()
    assert not padded[1].any()


def test_pad_tiles_refuses_counts_that_do_not_match():
    flat = torch.zeros(5, 3, TILE, TILE)
    with pytest.raises(ValueError, match="do not add up"):
        pad_tiles(flat, torch.tensor([2, 2]), 4)
    with pytest.raises(ValueError, match="must lie in 0..4"):
        pad_tiles(flat, torch.tensor([5, 0]), 4)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not an image", "does not decode"),
        (encode(random_image(40, 40))[:60], "does not decode"),
        (encode(random_image(2, 300)), "aspect ratio 300 x 2"),
    ],
)
def test_bad_images_get_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        load_tiled_image(data, TILE, 4)


def test_empty_image_gets_a_reason():
    with pytest.raises(BadImage, match="no pixels"):
        tile_image(Image.new("RGB", (0, 10)), TILE, 4)


def test_loader_batches_tiles_flat():
    fmt = SampleFormat(
        bos_id=1, eos_id=2, image_token_id=3, image_size=TILE, max_tokens=16,
        encode=lambda text: [5] * len(text.split()),
        max_num_tiles=4,
    )
    rows = [
        {"id": "a", "image": encode(random_image(40, 80)), "caption": "a wide one"},
        {"id": "b", "image": None, "caption": "no image"},
        {"id": "c", "image": encode(random_image(80, 80)), "caption": "square"},
    ]
    rng = np.random.default_rng(0)
    batch = collate([make_sample(r, fmt, rng) for r in rows], 0, TILE, max_num_tiles=4)
    assert batch["num_tiles"].tolist() == [2, 0, 4]
    assert batch["aspect_ratio_ids"].tolist() == [2, 0, 6]
    assert batch["images"].shape == (6, 3, TILE, TILE)
    assert batch["num_images"] == 2 and batch["computed_images"] == 3
    expected = load_tiled_image(rows[0]["image"], TILE, 4).tiles
    assert torch.equal(batch["images"][:2], expected)


def test_loader_batch_feeds_the_tiled_model(torch_one_thread):
    """The flat batch, padded by pad_tiles, is what the vision model's tiles take; a row without an image
    (id 0, no tiles) gives the same loss as the model's own no-image path."""
    model = open_tiled_model()  # gates open: the image path reaches the logits
    cfg = model.config
    size = cfg.vision.image_size
    fmt = SampleFormat(
        bos_id=0, eos_id=1, image_token_id=cfg.image_token_id, image_size=size, max_tokens=16,
        encode=lambda text: [5 + len(w) for w in text.split()], max_num_tiles=4,
    )
    rows = [
        {"id": "a", "image": encode(random_image(40, 90)), "caption": "a wide one"},
        {"id": "b", "image": None, "caption": "no image here"},
    ]
    batch = collate([make_sample(r, fmt, np.random.default_rng(0)) for r in rows], 1, size, max_num_tiles=4)
    pixels, mask = pad_tiles(batch["images"], batch["num_tiles"], 4)
    with torch.no_grad():
        logits = model(
            batch["input_ids"], pixels, aspect_ratio_ids=batch["aspect_ratio_ids"], aspect_ratio_mask=mask
        ).logits
        text_only = model(batch["input_ids"][1:]).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    with torch.no_grad():  # row a sees its tiles
        ids = batch["aspect_ratio_ids"][:1]
        blank = model(batch["input_ids"][:1], torch.zeros_like(pixels[:1]), aspect_ratio_ids=ids).logits
    assert not torch.allclose(logits[:1], blank)
    torch.testing.assert_close(logits[1:], text_only)
