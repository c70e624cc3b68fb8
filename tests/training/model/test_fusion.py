"""Fused model on the tiny presets: zero gates, masks, freezing, generation, weights, sizes, vision, video."""

import copy
import dataclasses
import json

import pytest
import torch

from vlmforge.training.model.config import ModelConfig, TrainableConfig, get_config
from vlmforge.training.model.fusion import FusionModel, media_attention_mask
from vlmforge.training.model.hf import mllama_state_dict
from vlmforge.training.model.perceiver import PerceiverResampler, sample_frame_indices
from vlmforge.training.model.vision import VisionEncoder, interpolate_position_embedding, split_views
from vlmforge.training.optim import param_groups
from vlmforge.training.weights import gather_tensors, load_into, read_metadata, save_tensors

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_model(preset: str = "tiny", seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(get_config(preset))


def open_gates(model: FusionModel) -> None:
    """Give every cross-attention gate a clearly non-zero value, as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn_gate", "mlp_gate")):
                p.uniform_(0.5, 1.0)


def text_ids(model: FusionModel, batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.decoder.vocab_size, (batch, length), generator=g)


def images(model: FusionModel, *shape: int, seed: int = 0) -> torch.Tensor:
    size = model.config.vision.image_size
    return torch.randn(*shape, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_tiny_forward_backward_gives_a_finite_loss_and_gradients():
    """(Its speed is measured by benchmarks/train_step.py, not asserted here.)"""
    model = tiny_model()
    ids = text_ids(model, 2, 32)
    ids[:, 3] = model.config.image_token_id
    labels = ids.masked_fill(ids >= model.config.decoder.vocab_size, -100)
    loss = model(ids, images(model, 2), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_zero_gates_give_exactly_the_decoder_logits_for_any_image():
    model = tiny_model().eval()
    ids = text_ids(model)
    sees_image = torch.ones(2, ids.shape[1], dtype=torch.bool)
    bare = model.decoder(ids)
    for seed in range(3):
        pixels = images(model, 2, seed=seed) * (1 + 10 * seed)
        assert torch.equal(model(ids, pixels, sees_image).logits, bare)
    open_gates(model)
    assert not torch.allclose(model(ids, images(model, 2), sees_image).logits, bare, atol=1e-3)


def test_rows_and_tokens_without_an_image_pass_unchanged():
    model = tiny_model().eval()
    open_gates(model)
    ids = text_ids(model)
    bare = model.decoder(ids)
    mask = torch.zeros(2, ids.shape[1], dtype=torch.bool)
    mask[0] = True  # row 0 sees its image everywhere, row 1 has none
    logits = model(ids, images(model, 2), mask).logits
    assert torch.equal(logits[1], bare[1])
    assert not torch.allclose(logits[0], bare[0], atol=1e-3)
    # no images at all: a placeholder goes through every layer and changes nothing
    assert torch.equal(model(ids).logits, bare)

    # tokens before the image token see no image: same as the decoder on the same ids
    with_token = ids.clone()
    with_token[:, 5] = model.config.image_token_id
    fused = model(with_token, images(model, 2)).logits
    as_text = model.decoder(with_token.clamp(max=model.config.decoder.vocab_size - 1))
    assert torch.equal(fused[:, :5], as_text[:, :5])
    assert not torch.allclose(fused[:, 5:], as_text[:, 5:], atol=1e-3)


def test_encoder_mask_follows_the_mllama_rule():
    image = 99
    ids = torch.tensor([[7, image, image, 3, 4, 5, image, 8, 9, 10]])
    mask = media_attention_mask(ids, image, num_media=4)
    expected = torch.zeros(1, 10, 4, dtype=torch.bool)
    expected[0, 1:6, 0] = True  # consecutive images 0 and 1 are seen together until the next image
    expected[0, 2:6, 1] = True
    expected[0, 6:, 2] = True  # the last image is seen to the end; image 3 has no token (padding)
    assert torch.equal(mask, expected)
    positions = torch.arange(10)
    # one image given: it is still seen only up to the next image token's span (as the processor does)
    assert torch.equal(media_attention_mask(ids, image, 1)[0, :, 0], (positions >= 1) & (positions < 6))
    assert not media_attention_mask(torch.tensor([[1, 2, 3]]), image, 2).any()


def test_a_token_only_attends_to_images_before_it():
    model = tiny_model().eval()
    open_gates(model)
    ids = text_ids(model, 1, 14)
    ids[0, [2, 8]] = model.config.image_token_id
    pixels = images(model, 1, 2)
    changed = pixels.clone()
    changed[0, 1] = torch.randn_like(changed[0, 1])  # the second image, whose token is at position 8
    before, after = model(ids, pixels).logits, model(ids, changed).logits
    assert torch.equal(before[0, :8], after[0, :8])
    assert not torch.allclose(before[0, 8:], after[0, 8:], atol=1e-4)


def test_default_switches_train_encoder_projection_and_fusion_only():
    model = tiny_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    by_part = {
        part: {n for n, _ in model.named_parameters() if n.startswith(part + ".")}
        for part in ("encoder", "projection", "decoder", "fusion")
    }
    assert trainable == by_part["encoder"] | by_part["projection"] | by_part["fusion"]
    assert by_part["decoder"] and not trainable & by_part["decoder"]

    ids = text_ids(model)
    ids[:, 4] = model.config.image_token_id
    model(ids, images(model, 2), labels=ids.masked_fill(ids >= 512, -100)).loss.backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    for part in (model.encoder, model.projection, model.fusion):
        assert all(p.grad is not None for p in part.parameters())
    assert model.fusion.layers[0].attn_gate.grad.abs().item() > 0
    assert model.fusion.token_embedding.weight.grad[0].abs().sum() > 0  # the image token's row learns

    model.zero_grad(set_to_none=True)
    model.set_trainable(TrainableConfig(encoder=False, decoder=True))
    model(ids, images(model, 2), labels=ids.masked_fill(ids >= 512, -100)).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model.config.trainable.decoder


def test_param_groups_exclude_embeddings_norms_and_gates_from_decay():
    model = tiny_model()
    decay, no_decay, gates = param_groups(model, weight_decay=0.1, gate_lr_scale=10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    gated = {names[id(p)] for p in gates["params"]}
    assert decayed | exempt | gated == {n for n, _ in model.trainable_parameters()}
    assert not decayed & exempt and not gated & (decayed | exempt)
    assert {
        "fusion.token_embedding.weight",
        "encoder.position_embedding",
        "encoder.class_embedding",
        "encoder.ln_pre.weight",
        "projection.layers.0.gate_attn",  # the projection head's own gates start at tanh(pi/4): no boost
    } <= exempt
    n_blocks = len(model.fusion.layers)
    assert gated == {f"fusion.layers.{i}.{g}" for i in range(n_blocks) for g in ("attn_gate", "mlp_gate")}
    assert "fusion.layers.0.cross_attn.q_proj.weight" in decayed
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert gates["weight_decay"] == 0.0 and gates["lr_scale"] == 10.0


def test_fused_generation_with_kv_cache_matches_recomputation():
    model = tiny_model().eval()
    open_gates(model)
    prompt = text_ids(model, 2, 6)
    prompt[:, 1] = model.config.image_token_id
    pixels = images(model, 2)
    cached = model.generate(prompt, pixels, max_new_tokens=10, use_cache=True)
    recomputed = model.generate(prompt, pixels, max_new_tokens=10, use_cache=False)
    assert cached.shape == (2, 16) and torch.equal(cached, recomputed)
    other_image = model.generate(prompt, pixels.flip(-1) * 3, max_new_tokens=10)
    assert not torch.equal(other_image, cached)  # the image does steer the generated text


def test_saved_trainable_weights_reproduce_the_logits(tmp_path):
    model = tiny_model(seed=0).eval()
    open_gates(model)
    path = tmp_path / "adapters.safetensors"
    save_tensors(gather_tensors(model, lambda name, p: p.requires_grad), path, model.config, [])

    fresh = tiny_model(seed=1).eval()
    fresh.decoder.load_state_dict(model.decoder.state_dict())  # the frozen part comes from the base LLM
    ids = text_ids(model)
    ids[:, 2] = model.config.image_token_id
    pixels = images(model, 2)
    assert not torch.allclose(fresh(ids, pixels).logits, model(ids, pixels).logits)
    names = load_into(fresh, path)
    assert names and not any(n.startswith("decoder.") for n in names)
    assert set(names) == {n for n, _ in model.trainable_parameters()}
    assert torch.equal(fresh(ids, pixels).logits, model(ids, pixels).logits)
    assert ModelConfig.from_dict(json.loads(read_metadata(path)["config"])) == model.config


@pytest.mark.parametrize(("preset", "published"), [("llama32_11b", 10.6e9), ("llama32_90b", 88.6e9)])
def test_parameter_count_of_llama32_vision_shapes(preset, published):
    with torch.device("meta"):
        model = FusionModel(get_config(preset))
    assert all(p.is_meta for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / published - 1) < 0.02, total
    if preset == "llama32_11b":  # the frozen decoder is exactly Llama 3.1 8B
        assert sum(p.numel() for p in model.decoder.parameters()) == 8_030_261_248
        assert model.projection.proj.in_features == 7680


def test_position_embedding_is_interpolated_bilinearly_for_other_resolutions():
    cfg = get_config("tiny").vision  # 32 px, patch 8: a 4x4 grid
    torch.manual_seed(0)
    encoder = VisionEncoder(cfg).eval()
    assert encoder.position_embedding_for((4, 4)) is encoder.position_embedding

    ramp = torch.arange(4.0).repeat(4).view(16, 1)  # value = column index
    table = interpolate_position_embedding(torch.cat([torch.full((1, 1), -1.0), ramp]), (2, 2))
    assert torch.equal(table[:, 0], torch.tensor([-1.0, 0.5, 2.5, 0.5, 2.5]))  # bilinear, not nearest
    constant = interpolate_position_embedding(torch.ones(17, 3), (7, 5))
    torch.testing.assert_close(constant, torch.ones(36, 3))

    stage2 = torch.randn(2, 3, 48, 48)
    out = encoder(stage2)
    assert out.num_tokens == 37 and out.last_hidden_state.shape[1] == 40  # padded to a multiple of 8
    encoder.resize_position_embedding(48)
    assert encoder.cfg.image_size == 48 and encoder.position_embedding.shape == (37, cfg.dim)
    torch.testing.assert_close(encoder(stage2).last_hidden_state, out.last_hidden_state, atol=1e-6, rtol=0)

    model = tiny_model()
    model.resize_images(48)
    assert model.config.vision.image_size == 48
    assert model.encode_images(stage2).shape == (2, 37, model.config.decoder.dim)
    assert model(text_ids(model)).logits.shape[:2] == (2, 16)  # the placeholder follows the new size


def tiled_copy(model: FusionModel, grid: int = 2) -> FusionModel:
    """The same weights in a model that reads images as a thumbnail plus grid x grid tiles."""
    cfg = copy.deepcopy(model.config)
    cfg.vision = dataclasses.replace(cfg.vision, tile_grid=grid)
    tiled = FusionModel(cfg)
    missing = tiled.load_state_dict(model.state_dict(), strict=False).missing_keys
    new = ["fusion.layers.0.tile_bias", "fusion.layers.1.tile_bias", "projection.view_embedding"]
    assert sorted(missing) == new
    return tiled.eval()


def test_split_views_gives_a_thumbnail_then_the_tiles_in_row_major_order():
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    views = split_views(pixels, 2).view(2, 5, 3, 4, 4)
    torch.testing.assert_close(views[:, 0], torch.nn.functional.avg_pool2d(pixels, 2))
    assert torch.equal(views[:, 1], pixels[..., :4, :4]) and torch.equal(views[:, 2], pixels[..., :4, 4:])
    assert torch.equal(views[:, 3], pixels[..., 4:, :4]) and torch.equal(views[:, 4], pixels[..., 4:, 4:])
    with pytest.raises(ValueError, match="divisible by 2"):
        split_views(torch.zeros(1, 3, 9, 9), 2)


def test_tiles_start_as_the_untiled_model_and_the_tile_bias_learns():
    model = tiny_model().eval()
    open_gates(model)
    tiled = tiled_copy(model)
    assert tiled.config.vision.input_size == 64 and tiled.placeholder_images(1).shape[-1] == 64
    ids = text_ids(model, 3, 12)
    ids[:, 1] = model.config.image_token_id
    small = images(model, 3)
    large = small.repeat_interleave(2, -1).repeat_interleave(2, -2)  # thumbnail == small, exactly
    expected = model(ids, small).logits
    start = (tiled(ids, large).logits - expected).abs().max()
    for bias, atol in ((-1e4, 1e-5), (-8.0, 2e-3)):  # closed: only the thumbnail is seen
        with torch.no_grad():
            for layer in tiled.fusion.layers:
                layer.tile_bias.fill_(bias)
        torch.testing.assert_close(tiled(ids, large).logits, expected, atol=atol, rtol=0)
    with torch.no_grad():
        for layer in tiled.fusion.layers:
            layer.tile_bias.zero_()
    wide_open = (tiled(ids, large).logits - expected).abs().max()
    assert 1e-2 < start < wide_open  # the default start (-2) lets the tiles in a little
    labels = ids.masked_fill(ids >= model.config.decoder.vocab_size, -100)
    tiled.train()
    tiled(ids, large, labels=labels).loss.backward()
    assert tiled.fusion.layers[0].tile_bias.grad.abs() > 0
    assert tiled.projection.view_embedding.grad.abs().sum() > 0
    _, no_decay, gates = param_groups(tiled, 0.05, gate_lr_scale=10)
    assert gates["lr_scale"] == 10 and any(p is tiled.fusion.layers[0].tile_bias for p in gates["params"])
    assert any(p is tiled.projection.view_embedding for p in no_decay["params"])  # an embedding: no decay
    with pytest.raises(ValueError, match="tile_grid"):
        mllama_state_dict(tiled)


def test_projection_head_concatenates_layers_and_drops_padding():
    model = tiny_model().eval()
    out = model.encoder(images(model, 3))
    assert len(out.hidden_states) == len(model.config.vision.intermediate_layers)
    assert out.last_hidden_state.shape[1] == 24 and out.num_tokens == 17
    assert model.projection(out).shape == (3, 17, model.config.decoder.dim)
    # Mllama's padding is visible to the real tokens: without it the same weights give other outputs
    plain = VisionEncoder(dataclasses.replace(model.config.vision, pad_to_multiple=1))
    plain.load_state_dict(model.encoder.state_dict())
    unpadded = plain(images(model, 3))
    assert unpadded.last_hidden_state.shape[1] == 17
    assert not torch.allclose(unpadded.last_hidden_state, out.last_hidden_state[:, :17], atol=1e-4)


def test_frame_sampling_is_uniform_and_fixed_length():
    assert torch.equal(sample_frame_indices(64, 64), torch.arange(64))
    assert torch.equal(sample_frame_indices(32, 64), torch.arange(32).repeat_interleave(2))
    long = sample_frame_indices(96, 64)
    assert len(long) == 64 and long[0] >= 0 and long[-1] <= 95 and (long.diff() > 0).all()
    assert torch.equal(sample_frame_indices(1, 64), torch.zeros(64, dtype=torch.long))


def test_video_yields_a_fixed_number_of_tokens_whatever_the_frame_count():
    model = tiny_model("tiny_video").eval()
    video = model.config.video
    expected = (2, video.num_frames // video.group_size * video.num_latents, model.config.decoder.dim)
    for num_frames in (32, 64, 96):
        frames = torch.randn(2, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(num_frames))
        assert model.encode_video(frames).shape == expected


def test_video_tokens_tell_the_order_of_the_groups():
    # The video cross-attention has no positions: the latents must carry where their group sits in time.
    model = tiny_model("tiny_video").eval()
    open_gates(model)
    ids = text_ids(model)
    ids[:, 1] = model.config.video_token_id
    frames = torch.randn(2, model.config.video.num_frames, 3, 32, 32)
    half = frames.shape[1] // 2  # two groups: the clip's halves swapped
    swapped = torch.cat([frames[:, half:], frames[:, :half]], dim=1)
    assert not torch.allclose(model(ids, videos=frames).logits, model(ids, videos=swapped).logits, atol=1e-4)


def test_the_order_of_frames_inside_a_group_moves_the_latents_from_the_start():
    # The frame embedding must not be drowned by the frame tokens (std ~1.5 out of the projection head):
    # started at 0.02 the reversed groups moved the latents < 1 % as far as a small change of the clip did.
    video = dataclasses.replace(get_config("tiny_video").video, num_frames=8, group_size=4)
    for seed in range(3):
        torch.manual_seed(seed)
        resampler = PerceiverResampler(video, 64).eval()
        scene = 1.5 * torch.randn(1, 1, 10, 64)
        frames, other = (scene + 0.3 * torch.randn(1, 8, 10, 64) for _ in range(2))  # two clips, one scene
        reversed_in_groups = frames.reshape(1, 2, 4, 10, 64).flip(2).reshape(1, 8, 10, 64)
        with torch.no_grad():
            out = resampler(frames)
            moved, apart = ((resampler(x) - out).norm() for x in (reversed_in_groups, other))
        assert moved > 0.1 * apart, (seed, float(moved / apart))


def test_video_adapters_start_closed_then_steer_the_text_and_train():
    model = tiny_model("tiny_video")
    ids = text_ids(model)
    ids[:, 1] = model.config.video_token_id
    frames = torch.randn(2, 40, 3, 32, 32)
    assert torch.equal(model(ids, videos=frames).logits, model(ids, videos=frames * 2).logits)
    open_gates(model)
    fused, other = model(ids, videos=frames).logits, model(ids, videos=frames * 2).logits
    assert torch.equal(fused[:, :1], other[:, :1])  # before the video token the video is not seen
    assert not torch.allclose(fused[:, 1:], other[:, 1:], atol=1e-4)
    labels = ids.masked_fill(ids >= model.config.decoder.vocab_size, -100)
    model(ids, videos=frames, labels=labels).loss.backward()
    assert model.video.resampler.latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())
