"""Models built from Hugging Face checkpoint dirs (model.hf_decoder, hf_encoder, hf_mllama): the example
configs, the errors for bad dirs, and the weights file that points back at the dirs (what `vlmforge eval`
loads). The multi-process training runs are in test_hf_training.py."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from train_support import ROOT, tiny_hf_dirs

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import load_train_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.hf import Checkpoint
from vlmforge.training.train import hf_sources, load_hf, model_config
from vlmforge.training.vlm import build_model
from vlmforge.training.weights import load_fusion_model, save_tensors

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LLAMA_CLIP = ROOT / "configs/train/llama31_8b_clip_l14.yaml"
MLLAMA = ROOT / "configs/train/llama32_11b_vision.yaml"


def load(path, **sets):
    return load_train_config(path, [f"{k}={v}" for k, v in sets.items()])


def llama_clip_config(**sets):
    dirs = tiny_hf_dirs()
    return load(LLAMA_CLIP, **{"model.hf_decoder": dirs["llama"], "model.hf_encoder": dirs["clip"], **sets})


def test_llama_clip_example_config_takes_the_shapes_of_the_dirs():
    cfg = llama_clip_config()
    assert cfg.train.deepspeed == "configs/deepspeed/zero3_real.json" and not cfg.model.trainable.decoder
    mc = model_config(cfg)
    d, v = mc.decoder, mc.vision
    assert (d.vocab_size, d.dim, d.num_layers, d.num_heads, d.num_kv_heads) == (512, 64, 4, 4, 2)
    assert d.tie_embeddings and d.rope_scaling.factor == 4.0 and d.bos_token_id == 0
    assert (v.dim, v.num_layers, v.image_size, v.patch_size, v.act) == (48, 4, 32, 8, "quick_gelu")
    assert v.attn_bias and v.pad_to_multiple == 1
    # the adapters from the llama32_11b preset: every 4th block of 4, 8 projection layers; the tower is too
    # shallow for Llama 3.2's intermediate layers, so its quarter points
    assert mc.fusion.every == 4 and mc.num_fusion_layers == 1 and mc.projection.num_layers == 8
    assert v.intermediate_layers == (1, 2, 3)
    model = build_model(cfg, mc)
    assert model.projection.proj.in_features == 48 * 4 and model.projection.proj.out_features == 64


def test_a_siglip_tower_as_the_encoder():
    dirs = tiny_hf_dirs()
    mc = model_config(llama_clip_config(**{"model.hf_encoder": dirs["siglip"], "model.preset": "tiny"}))
    v = mc.vision
    assert not v.class_token and v.patch_bias and not v.pre_norm and v.num_tokens == 16
    assert v.pixel_mean == (0.5, 0.5, 0.5) and v.act == "gelu_pytorch_tanh"
    assert v.intermediate_layers == (1, 3)


def test_mllama_example_config_takes_everything_from_the_checkpoint():
    cfg = load(MLLAMA, **{"model.hf_mllama": tiny_hf_dirs()["mllama"]})
    assert cfg.data.image_first
    mc = model_config(cfg)
    assert mc.decoder.num_layers == 4 and mc.fusion.every == 2 and mc.num_fusion_layers == 2
    assert mc.vision.dim == 32 and mc.vision.intermediate_layers == (1, 3) and not mc.vision.attn_bias
    assert mc.image_token_id == 512


def test_mllama_with_tiles_needs_the_checkpoints_tile_count():
    cfg = load(MLLAMA, **{"model.hf_mllama": tiny_hf_dirs()["mllama"], "model.max_num_tiles": 4})
    with pytest.raises(ConfigError, match=r"model.max_num_tiles: 4 differs from the 1 tile\(s\)"):
        model_config(cfg)
    one = load(MLLAMA, **{"model.hf_mllama": tiny_hf_dirs()["mllama"], "model.max_num_tiles": 1})
    assert model_config(one).vision.max_num_tiles == 1


def test_mllama_with_tiles_keeps_the_tile_tables(tmp_path):
    from train_support import open_tiled_model

    from vlmforge.training.model.hf import export_mllama

    tiled = open_tiled_model(4)
    export_mllama(tiled, tmp_path)
    cfg = load(MLLAMA, **{"model.hf_mllama": tmp_path, "model.max_num_tiles": 4})
    mc = model_config(cfg)
    assert mc.vision.max_num_tiles == 4
    model = build_model(cfg, mc, hf_sources(cfg))
    ours = dict(model.named_parameters())
    tables = ("encoder.tile_position_embedding.tile_embedding.weight", "projection.post_tile_embedding.gate")
    for name in tables:
        assert torch.equal(ours[name], tiled.get_parameter(name)), name


@pytest.mark.parametrize("placeholder", [LLAMA_CLIP, MLLAMA], ids=lambda p: p.stem)
def test_the_placeholders_are_named_when_not_set(placeholder):
    cfg = load(placeholder)
    field = "model.hf_mllama" if placeholder == MLLAMA else "model.hf_decoder"
    with pytest.raises(ConfigError, match=rf"^{field}: /PLACEHOLDER/.* is not a directory"):
        model_config(cfg)


def test_bad_dirs_are_config_errors_naming_the_field(tmp_path):
    dirs = tiny_hf_dirs()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(dirs["llama"] / "config.json", no_weights)
    cases = [
        (LLAMA_CLIP, "model.hf_decoder", tmp_path / "missing", "is not a directory"),
        (LLAMA_CLIP, "model.hf_decoder", tmp_path, "has no config.json"),
        (LLAMA_CLIP, "model.hf_decoder", no_weights, "no safetensors files"),
        (LLAMA_CLIP, "model.hf_encoder", dirs["llama"], "model_type 'llama' is not a CLIP or SigLIP vision"),
        (MLLAMA, "model.hf_mllama", dirs["clip"], "model_type 'clip_vision_model' is not a Mllama"),
    ]
    for config, field, path, why in cases:
        sets = (
            {"model.hf_decoder": dirs["llama"], "model.hf_encoder": dirs["clip"]}
            if config == LLAMA_CLIP
            else {}
        )
        cfg = load(config, **{**sets, field: path})
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: {re.escape(str(path))}: .*{why}"):
            model_config(cfg)
    with pytest.raises(ConfigError, match="model.hf_mllama is the whole model"):
        llama_clip_config(**{"model.hf_mllama": dirs["mllama"]})
    with pytest.raises(ConfigError, match="apply to tasks vlm and video only"):
        load(ROOT / "configs/train/text_lm.yaml", **{"model.hf_decoder": dirs["llama"]})
    with pytest.raises(ConfigError, match=r"model.image_size: 64 differs from the 32 px .*model.hf_encoder"):
        model_config(llama_clip_config(**{"model.image_size": 64}))


def test_weights_point_back_at_the_dirs_and_eval_rebuilds_the_model(tmp_path):
    """model.safetensors holds the trained parts; load_fusion_model (`vlmforge eval`) takes the decoder and
    the encoder from the dirs again, bit for bit, and the trained parts from the file."""
    dirs = tiny_hf_dirs()
    cfg = llama_clip_config(**{"model.preset": "tiny"})
    mc = model_config(cfg)
    model = build_model(cfg, mc)
    load_hf(model, cfg)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.add_(0.01)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_tensors(trained, tmp_path / "model.safetensors", mc, [], hf_sources(cfg))
    again = load_fusion_model(tmp_path / "model.safetensors")
    assert isinstance(again, FusionModel) and again.config == mc
    hf_llama = Checkpoint(dirs["llama"])
    for name, p in again.decoder.named_parameters():
        key = "model.embed_tokens.weight" if name == "lm_head.weight" else "model." + name  # tied
        assert torch.equal(p, hf_llama[key]), name
    hf_clip = transformers.CLIPVisionModel.from_pretrained(dirs["clip"]).vision_model
    assert torch.equal(again.encoder.class_embedding, hf_clip.embeddings.class_embedding)
    for name, p in again.named_parameters():
        if name in trained:
            assert torch.equal(p, trained[name]), name
    assert json.loads(json.dumps(hf_sources(cfg))) == {
        "decoder": str(dirs["llama"].resolve()),
        "encoder": str(dirs["clip"].resolve()),
    }


def test_cli_refuses_a_bad_dir_before_starting_processes(tmp_path, capsys):
    from vlmforge.pipeline.cli import main

    code = main(["train", str(LLAMA_CLIP), "--set", f"model.hf_encoder={tmp_path}"])
    assert code == 2
    assert "model.hf_decoder: /PLACEHOLDER/Llama-3.1-8B: " in capsys.readouterr().err


def test_the_gpu_benchmarks_random_dirs_have_transformers_names_and_shapes():
    """benchmarks/real_llama_gpu.py writes its 8B-shaped dirs without transformers: same tensors as
    transformers' LlamaForCausalLM and CLIPVisionModel at the benchmark's tiny shapes."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_llama_gpu as bench

    llama = {**bench.LLAMA, **bench.TINY_LLAMA}
    keys = {"architectures", "model_type", "torch_dtype", "head_dim"}
    hf_llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**{k: v for k, v in llama.items() if k not in keys}, head_dim=16)
    )
    assert dict(bench.llama_tensors(llama)) == {k: tuple(v.shape) for k, v in hf_llama.state_dict().items()}
    clip = {**bench.CLIP, **bench.TINY_CLIP}
    hf_clip = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(**{k: v for k, v in clip.items() if k not in keys})
    )
    want = {k: tuple(v.shape) for k, v in hf_clip.state_dict().items() if "position_ids" not in k}
    assert dict(bench.clip_tensors(clip)) == want
