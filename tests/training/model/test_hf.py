"""Against transformers: Llama decoder, CLIP encoder, Mllama export/import. Tiny random models, fp32, CPU."""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vlmforge.training.model.config import CLIP_MEAN, CLIP_STD, get_config  # noqa: E402
from vlmforge.training.model.decoder import rope_frequencies  # noqa: E402
from vlmforge.training.model.fusion import FusionModel, media_attention_mask  # noqa: E402
from vlmforge.training.model.hf import (  # noqa: E402
    export_mllama,
    fusion_model_from_hf,
    import_mllama,
    llama_config,
    load_clip_vision,
    load_llama,
)
from vlmforge.training.model.vision import padding_mask  # noqa: E402

TOL = 1e-4
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def mllama_takes_block_inputs() -> bool:
    """Whether this transformers feeds Mllama's projector the INPUTS of ``intermediate_layers_indices``
    (Meta's reference, vLLM, transformers 4.x in the pinned range) or their outputs (transformers 5.x, at
    least up to 5.25: one block deeper than the weights were trained with)."""
    from transformers.models.mllama.configuration_mllama import MllamaVisionConfig
    from transformers.models.mllama.modeling_mllama import MllamaVisionEncoder

    cfg = MllamaVisionConfig(hidden_size=8, intermediate_size=16, attention_heads=2)
    encoder = MllamaVisionEncoder(cfg, num_layers=2).eval()
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        try:
            out = encoder(x, output_hidden_states=True)
        except TypeError:  # 5.x: no flag, always returns them
            out = encoder(x)
    return torch.equal(out.hidden_states[0], x)


MLLAMA_INPUTS = mllama_takes_block_inputs()
needs_meta_convention = pytest.mark.skipif(
    not MLLAMA_INPUTS,
    reason=f"transformers {transformers.__version__} takes the OUTPUTS of Mllama's intermediate layers, not "
    "the inputs as Meta's reference does; install the pinned range (pip install -e '.[test]')",
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Weights far from any init symmetry (norm scales, biases and gates away from 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def llama_hf_config(**overrides):
    base = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    return transformers.LlamaConfig(**{**base, **overrides})


def llama3_rope(theta: float, **scaling) -> dict:
    """Llama 3 RoPE in this transformers' layout (5.x: rope_parameters; 4.x: rope_theta, rope_scaling)."""
    scaling = {"rope_type": "llama3", **scaling}
    if TRANSFORMERS_5:
        return {"rope_parameters": {"rope_theta": theta, **scaling}}
    return {"rope_theta": theta, "rope_scaling": scaling}


LLAMA_VARIANTS = {
    "untied-default-rope": {},
    "tied-llama3-rope-head_dim": dict(
        tie_word_embeddings=True,
        head_dim=24,
        **llama3_rope(
            10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
}


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_llama_decoder_matches_transformers(tmp_path, variant):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_hf_config(**LLAMA_VARIANTS[variant])).eval()
    randomize(hf, seed=1)
    hf.save_pretrained(tmp_path)
    ours = load_llama(tmp_path).eval()
    assert ours.cfg.tie_embeddings == hf.config.tie_word_embeddings
    assert (ours.cfg.rope_scaling is not None) == (variant != "untied-default-rope")

    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    diff = (got - expected).abs().max().item()
    print(f"llama {variant}: max abs logit diff {diff:.2e} (logits up to {expected.abs().max():.1f})")
    assert diff <= TOL

    with torch.no_grad():
        hf_tokens = hf.generate(ids[:, :5], max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(ours.generate(ids[:, :5], max_new_tokens=10), hf_tokens)


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = get_config("llama32_11b").decoder
    hf_cfg = llama_hf_config(
        hidden_size=cfg.dim,
        num_attention_heads=cfg.num_heads,
        **llama3_rope(cfg.rope_theta, **vars(cfg.rope_scaling)),
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    torch.testing.assert_close(rope_frequencies(cfg), expected, atol=0, rtol=1e-6)
    assert llama_config(hf_cfg.to_dict()).rope_scaling == cfg.rope_scaling


def clip_vision(tmp_path, full_clip: bool):
    vision = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=40,
        patch_size=8,
    )
    torch.manual_seed(0)
    if full_clip:
        hf = transformers.CLIPModel(
            transformers.CLIPConfig(
                vision_config=vision,
                text_config=dict(
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    vocab_size=99,
                ),
            )
        )
        tower = hf.vision_model
    else:
        hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision))
        tower = hf
    randomize(hf, seed=2, std=0.1)
    hf.save_pretrained(tmp_path)
    return tower.eval()


@pytest.mark.parametrize("full_clip", [False, True], ids=["CLIPVisionModel", "CLIPModel"])
def test_clip_encoder_matches_transformers(tmp_path, full_clip):
    tower = clip_vision(tmp_path, full_clip)
    encoder = load_clip_vision(tmp_path, intermediate_layers=(0, 2)).eval()  # block inputs: HF's [0], [2]
    assert encoder.cfg.act == "quick_gelu" and encoder.cfg.attn_bias and encoder.cfg.pad_to_multiple == 1

    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        expected = tower(pixel_values=pixels, output_hidden_states=True)
        got = encoder(pixels)
    diffs = [(got.last_hidden_state - expected.last_hidden_state).abs().max().item()]
    diffs += [
        (h - expected.hidden_states[i]).abs().max().item()
        for h, i in zip(got.hidden_states, (0, 2), strict=True)
    ]
    print(f"clip ({'CLIPModel' if full_clip else 'CLIPVisionModel'}): max abs hidden-state diffs {diffs}")
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape
    assert max(diffs) <= TOL


def siglip_vision(tmp_path, full_siglip: bool):
    vision = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=40,
        patch_size=8,
    )
    torch.manual_seed(0)
    if full_siglip:
        hf = transformers.SiglipModel(
            transformers.SiglipConfig(
                vision_config=vision,
                text_config=dict(
                    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
                ),
            )
        )
        tower = hf.vision_model
    else:
        hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision))
        tower = hf
    randomize(hf, seed=5, std=0.1)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    return tower.eval()


@pytest.mark.parametrize("full_siglip", [False, True], ids=["SiglipVisionModel", "SiglipModel"])
def test_siglip_encoder_matches_transformers(tmp_path, full_siglip):
    """SigLIP: no class token, a patch bias, no pre-norm, tanh GELU; its post layer norm (applied to every
    token in transformers' last_hidden_state) is the projection head's first layer norm here."""
    from vlmforge.training.model.vision import VisionProjection

    tower = siglip_vision(tmp_path, full_siglip)
    encoder = load_clip_vision(tmp_path, intermediate_layers=(0, 2)).eval()
    cfg = encoder.cfg
    assert not cfg.class_token and cfg.patch_bias and not cfg.pre_norm and cfg.act == "gelu_pytorch_tanh"
    assert cfg.norm_eps == 1e-6 and cfg.num_tokens == 25 and cfg.pad_to_multiple == 1
    assert cfg.pixel_mean == cfg.pixel_std == (0.5, 0.5, 0.5)  # SiglipImageProcessor's
    projection = VisionProjection(cfg, get_config("tiny").projection, 64)
    load_clip_vision(tmp_path, encoder, projection)

    # the data pipeline normalises with CLIP's mean and std; the encoder converts to SigLIP's own
    raw = torch.rand(2, 3, 40, 40)
    clip_mean, clip_std = (torch.tensor(v).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        expected = tower(pixel_values=(raw - 0.5) / 0.5, output_hidden_states=True)
        got = encoder((raw - clip_mean) / clip_std)
        post = projection.ln_post(got.last_hidden_state)
    diffs = [
        (got.last_hidden_state - expected.hidden_states[-1]).abs().max().item(),
        (post - expected.last_hidden_state).abs().max().item(),
    ]
    diffs += [
        (h - expected.hidden_states[i]).abs().max().item()
        for h, i in zip(got.hidden_states, (0, 2), strict=True)
    ]
    print(f"siglip ({type(tower).__name__}): max abs hidden-state diffs {diffs}")
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape == (2, 25, 48)
    assert max(diffs) <= TOL


def test_fusion_model_from_llama_and_siglip(tmp_path):
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(llama_hf_config()).eval()
    llama.save_pretrained(tmp_path / "llama")
    siglip_vision(tmp_path / "siglip", full_siglip=False)
    model = fusion_model_from_hf(tmp_path / "llama", tmp_path / "siglip", get_config("tiny")).eval()
    assert model.config.vision.intermediate_layers == (1, 3) and not model.config.vision.class_token
    ids = torch.randint(0, 300, (1, 12))
    ids[0, 0] = model.config.image_token_id
    images, blank = torch.randn(1, 3, 40, 40), torch.zeros(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(ids, images).logits, model(ids, blank).logits)  # gates closed at start
        for name, p in model.fusion.named_parameters():
            if name.endswith(("attn_gate", "mlp_gate")):
                p.fill_(0.5)
        assert (model(ids, images).logits - model(ids, blank).logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="attention biases|class token"):
        export_mllama(model, tmp_path / "out")


def test_fusion_model_from_llama_and_clip(tmp_path):
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(llama_hf_config()).eval()
    llama.save_pretrained(tmp_path / "llama")
    tower = clip_vision(tmp_path / "clip", full_clip=False)
    model = fusion_model_from_hf(tmp_path / "llama", tmp_path / "clip", get_config("tiny"))
    assert model.config.decoder.num_layers == 3 and model.config.fusion.every == 2  # from the preset
    assert len(model.fusion.layers) == 1 and model.config.vision.intermediate_layers == (1, 3)
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (model.decoder(ids) - llama(ids).logits).abs().max() <= TOL
        assert torch.equal(model(ids, torch.randn(1, 3, 40, 40)).logits, model.decoder(ids))
        post = getattr(tower, "vision_model", tower).post_layernorm  # 4.x CLIPVisionModel wraps it
        torch.testing.assert_close(model.projection.ln_post.weight, post.weight)
    assert not any(p.requires_grad for p in model.decoder.parameters())
    with pytest.raises(ValueError, match="attention biases"):
        export_mllama(model, tmp_path / "out")


def mllama_inputs(cfg, batch: int = 2, length: int = 14, first_token_image: bool = True):
    """Ids with two images per row; with ``first_token_image`` every token sees an image."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, cfg.decoder.vocab_size, (batch, length), generator=g)
    ids[:, 0 if first_token_image else 1] = cfg.image_token_id
    ids[0, 6] = cfg.image_token_id
    ids[1, 9] = cfg.image_token_id
    size = cfg.vision.image_size
    pixels = torch.randn(batch, 2, 3, size, size, generator=g)
    mask = media_attention_mask(ids, cfg.image_token_id, 2)
    return ids, pixels, mask


def hf_mllama_logits(hf, ids, pixels, mask):
    b, n = pixels.shape[:2]
    with torch.no_grad():
        return hf(
            input_ids=ids,
            pixel_values=pixels[:, :, None],  # one tile per image
            aspect_ratio_ids=torch.ones(b, n, dtype=torch.long),
            aspect_ratio_mask=torch.ones(b, n, 1, dtype=torch.long),
            cross_attention_mask=mask[..., None].long(),
        ).logits


def trained_tiny(seed: int = 0, max_num_tiles: int = 1) -> FusionModel:
    """The tiny preset with every weight randomised (tile tables too) and the gates away from zero."""
    cfg = get_config("tiny")
    cfg.vision = dataclasses.replace(cfg.vision, max_num_tiles=max_num_tiles)
    torch.manual_seed(seed)
    model = FusionModel(cfg).eval()
    randomize(model, seed=seed + 10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn_gate", "mlp_gate")):
                p.uniform_(0.5, 1.0)
    return model


@needs_meta_convention
def test_mllama_export_gives_the_same_logits_in_transformers(tmp_path):
    model = trained_tiny()
    export_mllama(model, tmp_path, max_shard_bytes=400_000)  # small shards: exercises the index file
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf, info = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    assert hf.config.text_config.cross_attention_layers == [
        1,
        4,
    ]  # every=2 on a 4-block decoder: before blocks 1 and 3

    ids, pixels, mask = mllama_inputs(model.config)
    ours = model(ids, pixels, mask).logits.detach()
    theirs = hf_mllama_logits(hf, ids, pixels, mask)
    diff = (ours - theirs).abs().max().item()
    print(f"mllama export: max abs logit diff {diff:.2e} (logits up to {theirs.abs().max():.1f})")
    assert diff <= TOL
    # the images matter in transformers too, so the comparison is not only of the text path
    assert (hf_mllama_logits(hf, ids, pixels.flip(0), mask) - theirs).abs().max() > 1e-2

    again = import_mllama(tmp_path).eval()
    assert torch.equal(again(ids, pixels, mask).logits, model(ids, pixels, mask).logits)


def tiny_mllama_config(max_num_tiles: int = 1) -> transformers.MllamaConfig:
    """A tiny random Mllama: 4 + 2 vision layers of 28 px, 8 text layers with cross-attention at 3."""
    ratios = {} if max_num_tiles > 1 else {"supported_aspect_ratios": [[1, 1]]}
    return transformers.MllamaConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_global_layers=2,
            attention_heads=4,
            image_size=28,
            patch_size=7,
            max_num_tiles=max_num_tiles,
            **ratios,
            intermediate_layers_indices=[1, 2, 0],
            vision_output_dim=128,
        ),
        text_config=dict(
            vocab_size=200,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            cross_attention_layers=[3],
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
            **llama3_rope(
                10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
        image_token_index=200,
    )


@needs_meta_convention
def test_mllama_import_of_a_transformers_model(tmp_path):
    cfg = tiny_mllama_config()
    torch.manual_seed(0)
    hf = transformers.MllamaForConditionalGeneration(cfg).eval()
    randomize(hf, seed=4)  # includes the tile embeddings and their gates, which import folds away
    hf.save_pretrained(tmp_path)
    model = import_mllama(tmp_path).eval()
    assert model.config.fusion.every == 4 and model.config.decoder.num_layers == 7
    assert len(model.fusion.layers) == 1 and model.config.vision.intermediate_layers == (1, 2, 0)

    ids, pixels, mask = mllama_inputs(model.config)
    ours = model(ids, pixels, mask).logits.detach()
    theirs = hf_mllama_logits(hf, ids, pixels, mask)
    diff = (ours - theirs).abs().max().item()
    print(f"mllama import: max abs logit diff {diff:.2e} (logits up to {theirs.abs().max():.1f})")
    assert diff <= TOL

    export_mllama(model, tmp_path / "round_trip")
    hf2 = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path / "round_trip").eval()
    assert (hf_mllama_logits(hf2, ids, pixels, mask) - theirs).abs().max() <= TOL


def test_intermediate_features_are_block_inputs(tmp_path):
    """Our features for index i are the input of block i. Where transformers takes the output (5.x), the
    export differs by exactly that and nothing else: the same checkpoint with indices i - 1 matches it."""
    model = trained_tiny()
    assert model.config.vision.intermediate_layers == (1, 3)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x = model.encoder.ln_pre(
            torch.cat(
                [
                    model.encoder.class_embedding.expand(2, 1, -1),
                    model.encoder.patch_embedding(pixels).flatten(2).transpose(1, 2),
                ],
                dim=1,
            )
            + model.encoder.position_embedding
        )
        x = torch.nn.functional.pad(x, (0, 0, 0, -x.shape[1] % 8))
        mask = padding_mask(17, x.shape[1], x.device)  # class token + 4 x 4 patches, padded to 24
        block_inputs = []
        for layer in model.encoder.layers:
            block_inputs.append(x)
            x = layer(x, mask)
        out = model.encoder(pixels)
    assert torch.equal(out.hidden_states[0], block_inputs[1]) and torch.equal(
        out.hidden_states[1], block_inputs[3]
    )

    export_mllama(model, tmp_path)
    ids, images, media = mllama_inputs(model.config)
    ours = model(ids, images, media).logits.detach()
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    diff = (hf_mllama_logits(hf, ids, images, media) - ours).abs().max().item()
    taken = "inputs" if MLLAMA_INPUTS else "outputs"
    print(f"transformers {transformers.__version__} takes block {taken}: max abs logit diff {diff:.2e}")
    if MLLAMA_INPUTS:
        assert diff <= TOL
        return
    assert diff > 1e-2
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["intermediate_layers_indices"] = [i - 1 for i in (1, 3)]
    (tmp_path / "config.json").write_text(json.dumps(config))
    shifted = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (hf_mllama_logits(shifted, ids, images, media) - ours).abs().max() <= TOL


def test_mllama_text_before_image_known_difference(tmp_path):
    """transformers lets a token that sees no image attend to all images (only its MLP branch is zeroed);
    Meta's reference, vLLM and this model zero both branches. Documented in training/model/hf.py."""
    model = trained_tiny()
    export_mllama(model, tmp_path)
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pixels, mask = mllama_inputs(model.config, first_token_image=False)  # a BOS-like token first
    assert not mask[:, 0].any()
    ours = model(ids, pixels, mask).logits.detach()
    with torch.no_grad():
        text_only = model.decoder(ids.clamp(max=model.config.decoder.vocab_size - 1))
        hf_text_only = hf(input_ids=ids).logits
    assert torch.equal(ours[:, 0], text_only[:, 0])
    theirs = hf_mllama_logits(hf, ids, pixels, mask)
    assert (theirs[:, 0] - hf_text_only[:, 0]).abs().max() > 1e-3  # if this fails, transformers changed


def test_media_mask_matches_the_mllama_processor():
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    image = 50
    rows = [
        [1, image, 5, 6, image, image, 7, 8, 9, 2],
        [image, 3, 4, image, 5, image, 6, 7, 8, 9],
        [1, 2, 3, 4, 5, 6, 7, image, image, image],
    ]
    ids = torch.tensor(rows)
    sparse = [get_cross_attention_token_mask(row, image) for row in rows]
    expected = convert_sparse_cross_attention_mask_to_dense(sparse, [[1] * 3] * 3, 1, 10)[..., 0]
    assert torch.equal(media_attention_mask(ids, image, 3), torch.from_numpy(expected).bool())


def test_mllama_export_refuses_a_video_model(tmp_path):
    model = FusionModel(get_config("tiny_video")).eval()
    with pytest.raises(ValueError, match="video model.*Mllama has no video path"):
        export_mllama(model, tmp_path)
    assert not (tmp_path / "config.json").exists()


@needs_meta_convention
def test_mllama_export_on_the_trainers_own_sequences(tmp_path):
    """The sequences `vlmforge train` feeds (make_sample + collate: <|image|><|begin_of_text|> caption EOS,
    right-padded) give the same logits in the exported transformers model at every position."""
    import io

    import numpy as np
    from PIL import Image

    from vlmforge.training.data import SampleFormat, collate, make_sample
    from vlmforge.training.vlm import loss as vlm_loss

    model = trained_tiny()
    cfg = model.config
    fmt = SampleFormat(
        bos_id=cfg.decoder.bos_token_id,
        eos_id=cfg.decoder.eos_token_id,
        image_token_id=cfg.image_token_id,
        image_size=cfg.vision.input_size,
        max_tokens=24,
        encode=lambda text: [2 + ord(c) % (cfg.decoder.vocab_size - 2) for c in text],
        image_first=True,  # data.image_first: Mllama's order
    )
    rng = np.random.default_rng(0)

    def png(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    captions = ["a red circle", "two blue squares on grey", "a green triangle left of a dot"]
    samples = [
        make_sample({"id": str(i), "image": png(i), "caption": c}, fmt, rng) for i, c in enumerate(captions)
    ]
    batch = collate(samples, fmt.eos_id, fmt.image_size)
    ids = batch["input_ids"]
    assert (ids[:, 0] == cfg.image_token_id).all() and (ids[:, 1] == fmt.bos_id).all()

    export_mllama(model, tmp_path)
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ours = model(ids, batch["images"]).logits
        trainer_loss = vlm_loss(model, batch)
    images = batch["images"][:, None]  # one image per row
    mask = media_attention_mask(ids, cfg.image_token_id, 1)
    theirs = hf_mllama_logits(hf, ids, images, mask)
    diff = (ours - theirs).abs().max().item()
    print(f"trainer sequences: max abs logit diff {diff:.2e} (logits up to {theirs.abs().max():.1f})")
    assert diff <= TOL
    # and the trainer's loss is transformers' loss on the same labels (new tokens never targets)
    labels = batch["labels"]
    hf_loss = torch.nn.functional.cross_entropy(
        theirs[:, :-1].flatten(0, 1)[:, : cfg.decoder.vocab_size], labels[:, 1:].flatten(), ignore_index=-100
    )
    assert abs(hf_loss.item() - trainer_loss.item()) <= TOL
