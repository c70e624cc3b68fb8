"""Mllama's aspect-ratio tiles against transformers: vision tower and logits for 1x1, 1x2, 2x1, 2x2 and 1x4
grids (max_num_tiles 4), export (ours -> transformers) and import (transformers -> ours). Tiny random models,
fp32, CPU; inputs from transformers' MllamaImageProcessor."""

import dataclasses

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_hf import TOL, needs_meta_convention, randomize, tiny_mllama_config, trained_tiny  # noqa: E402

from vlmforge.training.model.config import VisionConfig, get_config  # noqa: E402
from vlmforge.training.model.fusion import FusionModel, media_attention_mask  # noqa: E402
from vlmforge.training.model.hf import export_mllama, import_mllama, load_mllama  # noqa: E402
from vlmforge.training.model.tiles import tile_mask_from_ids  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# (rows, columns) of tiles -> an image of that shape at 1 px per tile-pixel
GRIDS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1), "2x2": (2, 2), "1x4": (1, 4)}


def tiled_inputs(cfg, seed: int = 0):
    """One row per grid, its image first (every token sees it), and a last row with two images (2x1 then
    1x2) plus an empty image slot: ids, pixels (B, 3, 4, C, S, S), aspect ratio ids and masks, and the
    cross-attention mask in Mllama's per-tile form (B, S, 3, 4)."""
    size = cfg.vision.image_size
    processor = transformers.MllamaImageProcessor(size={"height": size, "width": size}, max_image_tiles=4)
    rng = np.random.default_rng(seed)

    def image(rows: int, cols: int) -> np.ndarray:
        return (rng.random((rows * size, cols * size, 3)) * 255).astype(np.uint8)

    images = [[image(*grid)] for grid in GRIDS.values()] + [[image(2, 1), image(1, 2)]]
    batch = processor(images, return_tensors="pt")
    pixels, ratio_ids = batch["pixel_values"], batch["aspect_ratio_ids"]
    ratio_mask = tile_mask_from_ids(ratio_ids.flatten(), cfg.vision).view(*pixels.shape[:3]).long()
    assert ratio_mask[:, :2].equal(batch["aspect_ratio_mask"][:, :2] * (ratio_ids[:, :2, None] > 0))
    # a third, empty image slot (id 0, no tile), as a batch whose widest row has 3 images pads it
    pixels = torch.cat([pixels, torch.zeros_like(pixels[:, :1])], dim=1)
    ratio_ids = torch.cat([ratio_ids, torch.zeros_like(ratio_ids[:, :1])], dim=1)
    ratio_mask = torch.cat([ratio_mask, torch.zeros_like(ratio_mask[:, :1])], dim=1)

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, cfg.decoder.vocab_size, (len(images), 12), generator=g)
    ids[:, 0] = cfg.image_token_id
    ids[-1, 6] = cfg.image_token_id
    cross = media_attention_mask(ids, cfg.image_token_id, 3)[..., None] & ratio_mask[:, None].bool()
    return ids, pixels, ratio_ids, ratio_mask, cross


def hf_logits(hf, ids, pixels, ratio_ids, ratio_mask, cross):
    with torch.no_grad():
        return hf(
            input_ids=ids,
            pixel_values=pixels,
            aspect_ratio_ids=ratio_ids,
            aspect_ratio_mask=ratio_mask,
            cross_attention_mask=cross.long(),
        ).logits


def our_logits(model, ids, pixels, ratio_ids, ratio_mask):
    with torch.no_grad():
        return model(ids, pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask).logits


def per_grid_diffs(ours, theirs) -> dict[str, float]:
    diff = (ours - theirs).abs().amax(dim=(1, 2))
    return {name: diff[i].item() for i, name in enumerate([*GRIDS, "2x1+1x2+empty"])}


def hf_tiled_config():
    return tiny_mllama_config(max_num_tiles=4)


def test_config_validates_the_tile_fields():
    assert VisionConfig().max_num_tiles == 1
    assert VisionConfig(max_num_tiles=4).supported_aspect_ratios == [
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="vision.max_num_tiles"):
        VisionConfig(max_num_tiles=0)
    with pytest.raises(ValueError, match=r"vision\.tile_grid .* vision\.max_num_tiles"):
        VisionConfig(tile_grid=2, max_num_tiles=4)
    cfg = get_config("tiny_video")
    cfg.vision = dataclasses.replace(cfg.vision, max_num_tiles=4)
    with pytest.raises(ValueError, match="video"):
        FusionModel(cfg)


def tiled_tiny(seed: int = 0) -> FusionModel:
    return trained_tiny(seed, max_num_tiles=4)


@needs_meta_convention
def test_tiled_export_gives_the_same_logits_in_transformers(tmp_path):
    model = tiled_tiny()
    export_mllama(model, tmp_path)
    hf, info = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    assert hf.config.vision_config.max_num_tiles == 4
    inputs = tiled_inputs(model.config)
    ours, theirs = our_logits(model, *inputs[:4]), hf_logits(hf, *inputs)
    diffs = per_grid_diffs(ours, theirs)
    print(f"tiled export, max abs logit diff per grid: {diffs} (logits up to {theirs.abs().max():.1f})")
    assert max(diffs.values()) <= TOL
    # the tiles matter: another aspect ratio id (same pixels) changes the logits in both models
    ids, pixels, ratio_ids, ratio_mask, cross = inputs
    other = ratio_ids.clone()
    other[3, 0] = 7  # 2x2 -> the (3, 1) table; its first 3 tiles stay real
    other_mask = ratio_mask.clone()
    other_mask[3, 0, 3] = 0
    other_cross = cross.clone()
    other_cross[3, :, 0, 3] = False
    assert (hf_logits(hf, ids, pixels, other, other_mask, other_cross) - theirs)[3].abs().max() > 1e-2
    assert (our_logits(model, ids, pixels, other, None) - ours)[3].abs().max() > 1e-2  # mask from the ids

    again = import_mllama(tmp_path, tiles=True).eval()
    assert torch.equal(our_logits(again, *inputs[:4]), ours)


@needs_meta_convention
def test_tiled_import_of_a_transformers_model(tmp_path):
    torch.manual_seed(0)
    hf = transformers.MllamaForConditionalGeneration(hf_tiled_config()).eval()
    randomize(hf, seed=4)
    hf.save_pretrained(tmp_path)
    model = import_mllama(tmp_path, tiles=True).eval()
    assert model.config.vision.max_num_tiles == 4
    inputs = tiled_inputs(model.config, seed=1)
    ids, pixels, ratio_ids, ratio_mask, _ = inputs

    # the vision tower and projector alone: (images, tiles, tokens, decoder width) as transformers lays out
    hf_model = getattr(hf, "model", hf)  # transformers >= 4.52 wraps the parts in .model
    with torch.no_grad():
        features = hf_model.vision_model(pixels, ratio_ids, ratio_mask)[0]
        theirs = hf_model.multi_modal_projector(features).flatten(0, 1).flatten(1, 2)
        ours = model.encode_images(pixels.flatten(0, 1), ratio_ids.flatten(), ratio_mask.flatten(0, 1))
    real = ratio_ids.flatten() > 0
    vision_diff = (ours - theirs)[real].abs().max().item()
    print(f"tiled vision tower + projector: max abs diff {vision_diff:.2e}")
    assert vision_diff <= TOL

    theirs = hf_logits(hf, *inputs)
    diffs = per_grid_diffs(our_logits(model, *inputs[:4]), theirs)
    print(f"tiled import, max abs logit diff per grid: {diffs} (logits up to {theirs.abs().max():.1f})")
    assert max(diffs.values()) <= TOL

    export_mllama(model, tmp_path / "round_trip")
    hf2 = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path / "round_trip").eval()
    assert (hf_logits(hf2, *inputs) - theirs).abs().max() <= TOL


def test_tiled_import_refuses_another_tile_count(tmp_path):
    model = tiled_tiny()
    export_mllama(model, tmp_path)
    cfg = dataclasses.replace(model.config, vision=dataclasses.replace(model.config.vision, max_num_tiles=2))
    with pytest.raises(ValueError, match="max_num_tiles 2"):
        load_mllama(tmp_path, FusionModel(cfg))


def test_tiled_model_checks_its_inputs():
    model = tiled_tiny()
    ids = torch.full((1, 4), 5)
    ids[0, 0] = model.config.image_token_id
    pixels = torch.zeros(1, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="aspect_ratio_ids"):
        model(ids, pixels)
    with pytest.raises(ValueError, match=r"aspect_ratio_ids must lie in 0\.\.8"):
        model(ids, pixels, aspect_ratio_ids=torch.tensor([9]))
    with pytest.raises(ValueError, match=r"tiled images must be \(N, 4, 3, 32, 32\)"):
        model(ids, pixels[:, :2], aspect_ratio_ids=torch.tensor([1]), aspect_ratio_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="packed rows"):
        model(ids, pixels, aspect_ratio_ids=torch.tensor([1]), segment_ids=torch.zeros_like(ids))
    # no image in the batch: a placeholder with id 0 (all tiles padding) runs, text-only logits
    assert torch.equal(model(ids[:, 1:]).logits, model.decoder(ids[:, 1:]))
    single = FusionModel(get_config("tiny"))
    with pytest.raises(ValueError, match="single-tile"):
        single(ids, torch.zeros(1, 3, 32, 32), aspect_ratio_ids=torch.tensor([1]))


def test_tiled_model_trains_and_generates():
    model = tiled_tiny()
    ids, pixels, ratio_ids, ratio_mask, _ = tiled_inputs(model.config)
    loss = model(ids, pixels, labels=ids, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask).loss
    loss.backward()
    for name in (
        "encoder.pre_tile_embedding.embedding.weight",
        "encoder.tile_position_embedding.tile_embedding.weight",
        "projection.post_tile_embedding.embedding.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad[ratio_ids.unique()].abs().sum() > 0, name
        assert grad[8].abs().sum() == 0  # (4, 1): no image of that grid in the batch
    model.set_trainable(dataclasses.replace(model.config.trainable, encoder=False, projection=False))
    assert not model.get_parameter("projection.post_tile_embedding.gate").requires_grad

    prompt = ids[:, :5]
    kw = dict(aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask, max_new_tokens=4)
    cached = model.generate(prompt, pixels, **kw)
    assert torch.equal(cached, model.generate(prompt, pixels, use_cache=False, **kw))
