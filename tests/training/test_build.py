"""Building the fused model on the meta device and loading HF dirs into it (training/model/build.py) gives
the model that eager construction (``FusionModel(cfg)`` then ``load_hf_sources``) gives, in the run's dtype
and without materialising what the dirs overwrite."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from train_support import tiny_hf_dirs

from vlmforge.training.model.build import build_fusion_model, build_meta
from vlmforge.training.model.config import get_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.hf import (
    fusion_config_from_hf,
    load_hf_sources,
    loaded_parameters,
    mllama_dir_config,
)

pytest.importorskip("transformers")  # tiny_hf_dirs writes the dirs with it

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def sources(kind: str) -> dict[str, str]:
    dirs = tiny_hf_dirs()
    if kind == "mllama":
        return {"mllama": str(dirs["mllama"])}
    return {"decoder": str(dirs["llama"]), "encoder": str(dirs[kind])}


def config(kind: str):
    dirs = tiny_hf_dirs()
    if kind == "mllama":
        return mllama_dir_config(dirs["mllama"])
    return fusion_config_from_hf(get_config("tiny"), dirs["llama"], dirs[kind])


def eager(kind: str) -> FusionModel:
    model = FusionModel(config(kind))
    load_hf_sources(model, sources(kind))
    return model


def inputs(image_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, image_token, (3, 16), generator=g)
    ids[:, 0] = image_token  # Mllama's order: every token sees the image
    return ids, torch.randn(3, 3, 32, 32, generator=g)


def test_without_sources_the_same_random_draws_as_eager_construction():
    cfg = get_config("tiny_video")
    torch.manual_seed(7)
    expected = FusionModel(cfg).state_dict()
    torch.manual_seed(7)
    built = build_fusion_model(cfg).state_dict()
    assert built.keys() == expected.keys()
    assert all(torch.equal(built[k], expected[k]) for k in expected)


@pytest.mark.parametrize("kind", ["clip", "siglip", "mllama"])
def test_meta_built_and_loaded_gives_the_logits_of_eager_construction(kind):
    reference, built = eager(kind), build_fusion_model(config(kind), sources(kind))
    loaded = loaded_parameters(built, sources(kind))
    params = dict(built.named_parameters())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in loaded:
                assert torch.equal(params[name], p), name
            else:  # started from scratch in both: the same values, and the gates opened so images count
                if name.endswith("gate"):
                    p.fill_(0.5)
                params[name].copy_(p)
    if kind != "mllama":
        assert built.decoder.lm_head.weight is built.decoder.embed_tokens.weight  # still tied
    ids, images = inputs(built.config.image_token_id)
    with torch.no_grad():
        ours, theirs = built(ids, images).logits, reference(ids, images).logits
        other = reference(ids, images.roll(1, 0)).logits
    assert torch.equal(ours, theirs)
    assert (theirs - other).abs().max() > 1e-4  # the images matter to the compared logits


def test_bf16_build_loads_the_checkpoint_without_an_fp32_copy():
    model = build_fusion_model(config("clip"), sources("clip"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.media_probe.dtype == torch.bfloat16
    with safe_open(str(tiny_hf_dirs()["llama"] / "model-00002-of-00005.safetensors"), "pt") as f:
        name = next(k for k in f.keys() if k.startswith("model.layers."))
        expected = f.get_tensor(name).to(torch.bfloat16)
    assert torch.equal(model.decoder.get_parameter(name.removeprefix("model.")), expected)
    fresh = eager("clip")
    std = model.fusion.layers[0].mlp.up_proj.weight.float().std().item()
    assert std == pytest.approx(fresh.fusion.layers[0].mlp.up_proj.weight.std().item(), rel=0.2)
    # the adapters start from the usual initialisation, not from uninitialised memory


def test_meta_build_of_a_full_size_model_holds_no_memory():
    model = build_meta(get_config("llama32_11b"))
    assert sum(p.numel() for p in model.parameters()) > 10e9
    assert all(p.is_meta for p in model.parameters())


def test_frozen_digest_hashes_the_frozen_weights_in_chunks(monkeypatch):
    from vlmforge.training import train

    train.init_distributed()  # a world of one (gloo) unless a test already started it
    model = build_fusion_model(get_config("tiny"))
    before = train.frozen_digest(model)
    assert before[0] and len(before) == torch.distributed.get_world_size()
    monkeypatch.setattr(train, "DIGEST_CHUNK", 7)  # chunks that split elements: the same stream of bytes
    assert train.frozen_digest(model) == before
    with torch.no_grad():
        model.fusion.layers[0].mlp_gate.add_(1.0)  # trainable: not in the digest
        assert train.frozen_digest(model) == before
        model.decoder.layers[1].mlp.up_proj.weight[3, 5] += 1e-3  # frozen
    assert train.frozen_digest(model) != before


@pytest.mark.parametrize("kind", ["clip", "mllama"])
def test_zero3_build_partitions_module_by_module_with_the_loaded_values(kind):
    from vlmforge.training import train
    from vlmforge.training.optim import param_groups
    from vlmforge.training.weights import gathered

    train.init_distributed()
    ds = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
    }
    to_partitions = train.zero3_partitioner(ds, torch.float32)
    partitions: list[int] = []

    def partition(params):
        partitions.append(len(params))
        to_partitions(params)

    model = build_fusion_model(config(kind), sources(kind), partition=partition)
    assert all(hasattr(p, "ds_id") for p in model.parameters())
    assert len(partitions) > 10 and max(partitions) <= 4  # module by module, not the model at once
    reference_model = eager(kind)
    reference = dict(reference_model.named_parameters())
    sizes = [[len(g["params"]) for g in param_groups(m, 0.1)] for m in (model, reference_model)]
    assert sizes[0] == sizes[1]  # the same weight-decay groups as the unpartitioned model
    for name, p in model.named_parameters():
        if name in loaded_parameters(model, sources(kind)):
            with gathered(p):
                assert torch.equal(p.data, reference[name]), name
    if kind == "clip":
        assert model.decoder.lm_head.weight is model.decoder.embed_tokens.weight
