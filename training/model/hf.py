"""Hugging Face interop: Llama, CLIP and SigLIP checkpoints in, Mllama (Llama 3.2 Vision) format in and out.

Everything here is plain json + safetensors; transformers is only needed by the tests that compare with it.

Mllama export is exact for the single-tile model built here (``max_num_tiles = 1``): the tile machinery of
Mllama's vision model (pre/post tile embeddings, tile position embedding and its gate) is written as
zeros, and on import its single-tile ([1, 1]) part is folded into our position embedding and the bias of
the post-encoder layer norm. A model with Mllama's tiles (``vision.max_num_tiles`` > 1, model/tiles.py)
holds the same tables under the same shapes: they are written and read one to one (``tiles=True`` on
import keeps the checkpoint's tiles).

Not representable, so refused or warned about: attention biases in the ViT (CLIP and SigLIP have them,
Mllama has none), a tower without a class token or with a patch bias (SigLIP), padding other than Mllama's
multiple of 8 (CLIP and SigLIP towers pad nothing), a decoder ``head_dim`` other than dim / num_heads, more
than 8 new tokens, and the video adapters (not part of the Mllama format).

Intermediate vision features: ``intermediate_layers_indices`` name the blocks whose INPUTS feed the projector,
as in Meta's reference, torchtune, vLLM and transformers 4.45-4.54, so Llama-3.2-Vision's [3, 7, 15, 23, 30]
mean what its weights were trained with. transformers 4.55 feeds the last hidden state for every index, and
4.56 up to at least 5.25 the OUTPUTS (one block deeper: a checkpoint gives other logits there). The test extra
pins transformers to the range the parity tests pass in (>=4.46,<4.54; run at 4.46.3 and 4.53.3).

Training from checkpoint dirs (``model.hf_decoder``, ``model.hf_encoder``, ``model.hf_mllama``) goes
through ``fusion_config_from_hf`` / ``mllama_dir_config`` (shapes, checked dirs) and ``load_hf_sources``.

One behaviour differs on the transformers side: for a text token that sees no image, HF's
``MllamaCrossAttentionDecoderLayer`` zeroes only the MLP branch and lets the attention branch attend to
all image tokens; Meta's reference code, vLLM and this model zero both branches. Logits agree wherever
every token sees an image (e.g. the image token first); a token before the first image (such as BOS)
differs in transformers once the attention gates are non-zero, and through self-attention so do the
tokens after it. See tests/training/model/test_hf.py::test_mllama_text_before_image_known_difference.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vlmforge.common.files import atomic_path
from vlmforge.training.model.config import (
    CLIP_MEAN,
    CLIP_STD,
    DecoderConfig,
    FusionConfig,
    ModelConfig,
    ProjectionConfig,
    RopeScaling,
    VisionConfig,
)
from vlmforge.training.model.decoder import Decoder
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.vision import VisionEncoder, VisionProjection

MLLAMA_NEW_TOKENS = 8  # Mllama's embedding table has vocab_size + 8 rows


class Checkpoint:
    """Lazy random access to the tensors of a safetensors file or HF checkpoint directory (sharded or not)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():
            files = [path]
        elif (path / "model.safetensors.index.json").exists():
            weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
            files = sorted({path / name for name in weight_map.values()})
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {path}")
        self._handles: dict[str, Any] = {}
        for file in files:
            handle = safe_open(str(file), framework="pt")
            for name in handle.keys():
                self._handles[name] = handle

    def keys(self) -> list[str]:
        return list(self._handles)

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._handles:
            raise KeyError(f"tensor {name!r} not in checkpoint")
        return self._handles[name].get_tensor(name)

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of a tensor, read without the rest of it."""
        if name not in self._handles:
            raise KeyError(f"tensor {name!r} not in checkpoint")
        return self._handles[name].get_slice(name)[start:stop]


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


def holds_values(param: Tensor) -> bool:
    """False for a parameter on the meta device (not built yet) or already split into ZeRO-3 partitions
    (filled before): loaders skip those, which lets model/build.py fill a model one module at a time."""
    return not param.is_meta and not hasattr(param, "ds_id")


def load_parameters(module: nn.Module, source: Callable[[str], Tensor]) -> None:
    """Fill every parameter of ``module`` with ``source(name)`` (shapes must match, dtype is converted)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not holds_values(param):
                continue
            tensor = source(name)
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor)


def _empty(build: Callable[[], nn.Module], dtype: torch.dtype) -> nn.Module:
    """Build a module without initialising it (every parameter is about to be overwritten)."""
    with torch.device("meta"):
        module = build()
    return module.to(dtype).to_empty(device="cpu")


def save_safetensors(tensors: dict[str, Tensor], directory: Path, max_shard_bytes: int) -> list[Path]:
    """Write HF-style ``model.safetensors`` or numbered shards plus ``model.safetensors.index.json``."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards, strict=True):
        with atomic_path(directory / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        with atomic_path(directory / "model.safetensors.index.json") as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    return [directory / name for name in names]


# -------------------------------------------------------------------------------------------------- Llama


def llama_config(hf: dict[str, Any]) -> DecoderConfig:
    """DecoderConfig from a ``LlamaForCausalLM`` config.json (transformers 4.x or 5.x layout)."""
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("Llama checkpoints with attention or MLP biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}")
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or rope
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "llama3":
        rope_scaling = RopeScaling(
            factor=scaling["factor"],
            low_freq_factor=scaling["low_freq_factor"],
            high_freq_factor=scaling["high_freq_factor"],
            original_max_position_embeddings=scaling["original_max_position_embeddings"],
        )
    elif rope_type == "default":
        rope_scaling = None
    else:
        raise ValueError(f"unsupported rope type {rope_type!r}")
    return DecoderConfig(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        mlp_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )


def load_llama(
    path: str | Path, decoder: Decoder | None = None, dtype: torch.dtype = torch.float32
) -> Decoder:
    """Load a Llama checkpoint directory (config.json + safetensors) into ``decoder`` or a new one."""
    if decoder is None:
        cfg = llama_config(read_config(path))
        decoder = _empty(lambda: Decoder(cfg), dtype)
    ckpt = Checkpoint(path)

    def source(name: str) -> Tensor:
        if name == "lm_head.weight" and name not in ckpt:  # tied checkpoints store the table once
            return ckpt["model.embed_tokens.weight"]
        return ckpt[name if name == "lm_head.weight" else "model." + name]

    load_parameters(decoder, source)
    return decoder


# --------------------------------------------------------------------------------------------------- CLIP


def clip_vision_config(hf: dict[str, Any], intermediate_layers: Iterable[int] | None = None) -> VisionConfig:
    """VisionConfig from a ``CLIPVisionModel`` or ``CLIPModel`` config.json."""
    v = hf["vision_config"] if "vision_config" in hf else hf
    num_layers = v["num_hidden_layers"]
    if intermediate_layers is None:  # Llama 3.2's choice where it fits, else quarter points
        intermediate_layers = [i for i in VisionConfig().intermediate_layers if i < num_layers - 1]
        intermediate_layers = intermediate_layers or sorted(
            {num_layers // 4, num_layers // 2, 3 * num_layers // 4}
        )
    return VisionConfig(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        num_channels=v.get("num_channels", 3),
        dim=v["hidden_size"],
        num_layers=num_layers,
        num_heads=v["num_attention_heads"],
        mlp_dim=v["intermediate_size"],
        act=v.get("hidden_act", "quick_gelu"),
        norm_eps=v.get("layer_norm_eps", 1e-5),
        attn_bias=True,
        intermediate_layers=tuple(intermediate_layers),
        pad_to_multiple=1,
    )


def siglip_vision_config(
    hf: dict[str, Any], intermediate_layers: Iterable[int] | None = None
) -> VisionConfig:
    """VisionConfig from a ``SiglipVisionModel`` or ``SiglipModel`` config.json (no class token, a patch
    bias, no pre-norm; the attention-pooling head is not used)."""
    v = hf["vision_config"] if "vision_config" in hf else hf
    clip = clip_vision_config(
        {
            **v,
            "hidden_act": v.get("hidden_act", "gelu_pytorch_tanh"),
            "layer_norm_eps": v.get("layer_norm_eps", 1e-6),
        },
        intermediate_layers,
    )
    return dataclasses.replace(clip, class_token=False, patch_bias=True, pre_norm=False)


def vision_config(
    hf: dict[str, Any],
    intermediate_layers: Iterable[int] | None = None,
    preprocessor: dict[str, Any] | None = None,
) -> VisionConfig:
    """VisionConfig of a CLIP or SigLIP vision tower's (or whole model's) config.json; the pixel
    normalisation from its preprocessor_config.json where given, else the model type's usual one."""
    siglip = hf.get("model_type") in SIGLIP_TYPES
    cfg = (siglip_vision_config if siglip else clip_vision_config)(hf, intermediate_layers)
    preprocessor = preprocessor or {}
    default_mean, default_std = ((0.5,) * 3, (0.5,) * 3) if siglip else (CLIP_MEAN, CLIP_STD)
    return dataclasses.replace(
        cfg,
        pixel_mean=tuple(float(x) for x in preprocessor.get("image_mean", default_mean)),
        pixel_std=tuple(float(x) for x in preprocessor.get("image_std", default_std)),
    )


def read_preprocessor(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "preprocessor_config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def _clip_name(name: str) -> str:
    """Encoder parameter name -> CLIP vision tower name (after any ``vision_model.`` prefix)."""
    fixed = {
        "patch_embedding.weight": "embeddings.patch_embedding.weight",
        "patch_embedding.bias": "embeddings.patch_embedding.bias",
        "class_embedding": "embeddings.class_embedding",
        "position_embedding": "embeddings.position_embedding.weight",
    }
    if name in fixed:
        return fixed[name]
    name = re.sub(r"^ln_pre\.", "pre_layrnorm.", name)
    name = re.sub(r"^layers\.", "encoder.layers.", name)
    for ours, theirs in (
        ("input_layernorm", "layer_norm1"),
        ("post_attention_layernorm", "layer_norm2"),
        ("self_attn.o_proj", "self_attn.out_proj"),
    ):
        name = name.replace(ours, theirs)
    return name


def load_clip_vision(
    path: str | Path,
    encoder: VisionEncoder | None = None,
    projection: VisionProjection | None = None,
    intermediate_layers: Iterable[int] | None = None,
) -> VisionEncoder:
    """Load a CLIP or SigLIP vision tower into ``encoder`` (or a new one); its post layer norm into
    ``projection``."""
    if encoder is None:
        cfg = vision_config(read_config(path), intermediate_layers, read_preprocessor(path))
        encoder = _empty(lambda: VisionEncoder(cfg), torch.float32)
    ckpt = Checkpoint(path)
    # "vision_model." in CLIPModel, SiglipModel and transformers 4.x *VisionModel checkpoints, nothing in 5.x
    (patch_name,) = [k for k in ckpt.keys() if k.endswith("embeddings.patch_embedding.weight")]
    prefix = patch_name.removesuffix("embeddings.patch_embedding.weight")
    load_parameters(encoder, lambda name: ckpt[prefix + _clip_name(name)])
    if projection is not None:
        with torch.no_grad():
            for part in ("weight", "bias"):
                param = getattr(projection.ln_post, part)
                if holds_values(param):
                    param.copy_(ckpt[f"{prefix}post_layernorm.{part}"])
    return encoder


def _model_type(path: str | Path, expected: tuple[str, ...], what: str) -> dict[str, Any]:
    """config.json of a checkpoint directory, refused unless its model_type is one of ``expected`` and it
    has safetensors weights (FileNotFoundError / ValueError saying why)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json (expected a transformers {what} checkpoint dir)")
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type not in expected:
        raise ValueError(f"{path}: model_type {model_type!r} is not a {what} ({', '.join(expected)})")
    Checkpoint(path)  # raises when there are no safetensors files (or the index names missing ones)
    return hf


LLAMA_TYPES = ("llama",)
SIGLIP_TYPES = ("siglip", "siglip_vision_model")
VISION_TYPES = ("clip", "clip_vision_model", *SIGLIP_TYPES)
MLLAMA_TYPES = ("mllama",)


def llama_dir_config(path: str | Path) -> DecoderConfig:
    """DecoderConfig of a transformers Llama checkpoint directory, checked (config.json, weights)."""
    return llama_config(_model_type(path, LLAMA_TYPES, "Llama"))


def vision_dir_config(path: str | Path, intermediate_layers: Iterable[int] | None = None) -> VisionConfig:
    """VisionConfig of a CLIP or SigLIP vision tower (or whole model) directory, checked."""
    hf = _model_type(path, VISION_TYPES, "CLIP or SigLIP vision")
    return vision_config(hf, intermediate_layers, read_preprocessor(path))


def mllama_dir_config(path: str | Path, tiles: bool = False) -> ModelConfig:
    """ModelConfig of an ``MllamaForConditionalGeneration`` directory (Llama 3.2 Vision), checked; with
    ``tiles`` the checkpoint's tiles (``model_config_from_mllama``)."""
    return model_config_from_mllama(_model_type(path, MLLAMA_TYPES, "Mllama"), tiles)


def fusion_config_from_hf(
    base: ModelConfig,
    llama_path: str | Path | None = None,
    vision_path: str | Path | None = None,
) -> ModelConfig:
    """``base`` with its decoder and/or vision shapes replaced by those of Llama / CLIP checkpoint dirs.

    Projection head, fusion layers and video adapters keep ``base``'s settings; the projection head is
    sized from the vision tower (its width and intermediate layers) and the decoder width. ``base``'s
    intermediate layers are kept where the tower is deep enough, else Llama 3.2's choice where it fits.
    """
    vision, decoder = base.vision, base.decoder
    if vision_path is not None:
        hf = _model_type(vision_path, VISION_TYPES, "CLIP or SigLIP vision")
        depth = (hf.get("vision_config") or hf)["num_hidden_layers"]
        layers = base.vision.intermediate_layers if max(base.vision.intermediate_layers) < depth else None
        vision = vision_config(hf, layers, read_preprocessor(vision_path))
        vision = dataclasses.replace(
            vision, tile_grid=base.vision.tile_grid, max_num_tiles=base.vision.max_num_tiles
        )
    if llama_path is not None:
        decoder = llama_dir_config(llama_path)
    return dataclasses.replace(base, vision=vision, decoder=decoder)


def fusion_model_from_hf(
    llama_path: str | Path, clip_path: str | Path, config: ModelConfig | None = None
) -> FusionModel:
    """A fused model whose decoder is a Llama checkpoint and whose encoder starts from a CLIP tower.

    Projection head, fusion layers and video adapters come from ``config`` and start from scratch.
    """
    model = FusionModel(fusion_config_from_hf(config or ModelConfig(), llama_path, clip_path))
    load_hf_sources(model, {"decoder": str(llama_path), "encoder": str(clip_path)})
    return model


# What a model can be initialised from (before any model.init_from file): the Mllama checkpoint of the
# whole model, or a Llama decoder and/or a CLIP or SigLIP vision tower. Keys as in ``load_hf_sources``.
HF_SOURCE_KINDS = ("mllama", "decoder", "encoder")


def load_hf_sources(model: FusionModel, sources: dict[str, str]) -> None:
    """Load HF checkpoint directories into ``model``: ``{"mllama": dir}`` or ``{"decoder": dir, "encoder":
    dir}`` (either). The CLIP tower's post layer norm goes into the projection head's."""
    unknown = set(sources) - set(HF_SOURCE_KINDS)
    if unknown or ("mllama" in sources and len(sources) > 1):
        raise ValueError(f"HF sources: mllama alone, or decoder and/or encoder; got {sorted(sources)}")
    if "mllama" in sources:
        load_mllama(sources["mllama"], model)
    if "decoder" in sources:
        load_llama(sources["decoder"], model.decoder)
    if "encoder" in sources:
        load_clip_vision(sources["encoder"], model.encoder, model.projection)


def loaded_parameters(model: FusionModel, sources: dict[str, str]) -> set[str]:
    """Names of the parameters of ``model`` that ``load_hf_sources(model, sources)`` fills."""
    names = set()
    for name, _ in model.named_parameters():
        if "mllama" in sources and not _mllama_keeps_init(name):
            names.add(name)
        if "decoder" in sources and name.startswith("decoder."):
            names.add(name)
        if "encoder" in sources and name.startswith(("encoder.", "projection.ln_post.")):
            names.add(name)
    return names


# ------------------------------------------------------------------------------------------------- Mllama


def _self_layer_index(i: int, every: int) -> int:
    """Mllama layer index of decoder block i (cross-attention layers are entries of the same list)."""
    return i + (i + 1) // every


def _cross_layer_index(j: int, every: int) -> int:
    return (j + 1) * every - 1 + j


def mllama_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The config.json of ``MllamaForConditionalGeneration`` for this model."""
    v, d, every = cfg.vision, cfg.decoder, cfg.fusion.every
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": d.rope_theta}
    if d.rope_scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": d.rope_theta, **vars(d.rope_scaling)}
    text = {
        "model_type": "mllama_text_model",
        "vocab_size": d.vocab_size,
        "hidden_size": d.dim,
        "intermediate_size": d.mlp_dim,
        "num_hidden_layers": d.num_layers + cfg.num_fusion_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": d.norm_eps,
        "max_position_embeddings": d.max_seq_len,
        # transformers >= 5 reads rope_parameters; 4.x (and vLLM builds on it) read rope_theta/rope_scaling
        "rope_parameters": rope,
        "rope_theta": d.rope_theta,
        "rope_scaling": {k: val for k, val in rope.items() if k != "rope_theta"} if d.rope_scaling else None,
        "cross_attention_layers": [_cross_layer_index(j, every) for j in range(cfg.num_fusion_layers)],
        "tie_word_embeddings": False,
        "bos_token_id": d.bos_token_id,
        "eos_token_id": d.eos_token_id,
        "pad_token_id": d.pad_token_id,
    }
    vision = {
        "model_type": "mllama_vision_model",
        "hidden_size": v.dim,
        "intermediate_size": v.mlp_dim,
        "num_hidden_layers": v.num_layers,
        "num_global_layers": cfg.projection.num_layers,
        "attention_heads": v.num_heads,
        "num_channels": v.num_channels,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": v.act,
        "norm_eps": v.norm_eps,
        "max_num_tiles": v.max_num_tiles,
        "supported_aspect_ratios": [list(r) for r in v.supported_aspect_ratios],
        "intermediate_layers_indices": list(v.intermediate_layers),
        "vision_output_dim": v.dim * (1 + len(v.intermediate_layers)),
    }
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "model_type": "mllama",
        "image_token_index": cfg.image_token_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
        "text_config": text,
        "vision_config": vision,
    }


def model_config_from_mllama(hf: dict[str, Any], tiles: bool = False) -> ModelConfig:
    """ModelConfig from an Mllama config.json; the fusion interval is read off ``cross_attention_layers``.

    ``tiles``: keep the checkpoint's ``max_num_tiles`` (Mllama's tiles), else a single-tile model.
    """
    t, v = hf["text_config"], hf["vision_config"]
    cross = list(t["cross_attention_layers"])
    every = cross[0] + 1
    num_self = t["num_hidden_layers"] - len(cross)
    if cross != [_cross_layer_index(j, every) for j in range(len(cross))] or num_self // every != len(cross):
        raise ValueError(
            f"cross_attention_layers {cross} are not one every {every} blocks before block 3, 7, ..."
        )
    decoder = llama_config({**t, "num_hidden_layers": num_self, "tie_word_embeddings": False})
    if hf.get("image_token_index", t["vocab_size"]) != t["vocab_size"]:
        raise ValueError("the image token must be the first id after the vocabulary")
    vision = VisionConfig(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        num_channels=v.get("num_channels", 3),
        dim=v["hidden_size"],
        num_layers=v["num_hidden_layers"],
        num_heads=v["attention_heads"],
        mlp_dim=v["intermediate_size"],
        act=v.get("hidden_act", "gelu"),
        norm_eps=v.get("norm_eps", 1e-5),
        attn_bias=False,
        intermediate_layers=tuple(v["intermediate_layers_indices"]),
        pad_to_multiple=8,
        max_num_tiles=v.get("max_num_tiles", 4) if tiles else 1,
    )
    ratios = [tuple(r) for r in v.get("supported_aspect_ratios") or [[1, 1]]]
    if tiles and ratios != vision.supported_aspect_ratios:
        raise ValueError(
            f"supported_aspect_ratios {ratios} are not Mllama's for max_num_tiles {vision.max_num_tiles}"
        )
    return ModelConfig(
        vision=vision,
        projection=ProjectionConfig(num_layers=v["num_global_layers"]),
        decoder=decoder,
        fusion=FusionConfig(every=every, num_new_tokens=MLLAMA_NEW_TOKENS),
    )


def _mllama_name(name: str, every: int) -> str | None:
    """Our parameter name -> Mllama hub name, for the parameters that map one to one (else None)."""
    part, rest = name.split(".", 1)
    if part == "encoder":
        if rest.startswith("layers."):
            return "vision_model.transformer." + rest
        fixed = {
            "patch_embedding.weight": "patch_embedding.weight",
            "class_embedding": "class_embedding",
            "position_embedding": "gated_positional_embedding.embedding",
            "tile_position_embedding.gate": "gated_positional_embedding.gate",
            "tile_position_embedding.tile_embedding.weight": "gated_positional_embedding.tile_embedding."
            "weight",
            "pre_tile_embedding.gate": "pre_tile_positional_embedding.gate",
            "pre_tile_embedding.embedding.weight": "pre_tile_positional_embedding.embedding.weight",
        }
        fixed.update({f"ln_pre.{p}": f"layernorm_pre.{p}" for p in ("weight", "bias")})
        return "vision_model." + fixed[rest] if rest in fixed else None
    if part == "projection":
        if rest.startswith("layers."):
            return "vision_model.global_transformer." + rest
        return {
            "ln_post.weight": "vision_model.layernorm_post.weight",
            "ln_post.bias": "vision_model.layernorm_post.bias",
            "post_tile_embedding.gate": "vision_model.post_tile_positional_embedding.gate",
            "post_tile_embedding.embedding.weight": "vision_model.post_tile_positional_embedding.embedding."
            "weight",
            "proj.bias": "multi_modal_projector.bias",
        }.get(rest)
    if part == "decoder":
        if m := re.match(r"layers\.(\d+)\.(.*)", rest):
            return f"language_model.model.layers.{_self_layer_index(int(m[1]), every)}.{m[2]}"
        return {"norm.weight": "language_model.model.norm.weight"}.get(rest)
    if part == "fusion" and (m := re.match(r"layers\.(\d+)\.(.*)", rest)):
        inner = {"attn_gate": "cross_attn_attn_gate", "mlp_gate": "cross_attn_mlp_gate"}.get(m[2], m[2])
        return f"language_model.model.layers.{_cross_layer_index(int(m[1]), every)}.{inner}"
    return None


def _projector_to_mllama(w: Tensor, dim: int, num_intermediate: int) -> Tensor:
    """Mllama stacks intermediate features on a last axis (feature-major); we concatenate layer-major."""
    final, inter = w[:, :dim], w[:, dim:]
    inter = inter.reshape(-1, num_intermediate, dim).transpose(1, 2).reshape(-1, dim * num_intermediate)
    return torch.cat([final, inter], dim=1)


def _projector_from_mllama(w: Tensor, dim: int, num_intermediate: int) -> Tensor:
    final, inter = w[:, :dim], w[:, dim:]
    inter = inter.reshape(-1, dim, num_intermediate).transpose(1, 2).reshape(-1, dim * num_intermediate)
    return torch.cat([final, inter], dim=1)


def mllama_state_dict(model: FusionModel) -> dict[str, Tensor]:
    """The model's weights under Mllama's hub names (the layout ``save_pretrained`` writes)."""
    cfg = model.config
    v, d = cfg.vision, cfg.decoder
    if v.attn_bias:
        raise ValueError("Mllama's ViT has no attention biases; this encoder has them (CLIP-initialised?)")
    if v.pixel_mean != CLIP_MEAN or v.pixel_std != CLIP_STD:
        raise ValueError(
            "Mllama's image processor normalises with CLIP's mean and std; this encoder expects others"
        )
    if not v.class_token or v.patch_bias or not v.pre_norm:
        raise ValueError("Mllama's ViT has a class token, no patch bias and a pre-norm (this one: SigLIP's?)")
    if v.pad_to_multiple != 8:
        raise ValueError("Mllama pads vision tokens to a multiple of 8; set VisionConfig.pad_to_multiple=8")
    if v.norm_eps != 1e-5:
        raise ValueError("Mllama's pre/post layer norms use eps 1e-5")
    if d.head_dim * d.num_heads != d.dim:
        raise ValueError("Mllama derives head_dim as hidden_size / num_attention_heads")
    if cfg.fusion.num_new_tokens > MLLAMA_NEW_TOKENS:
        raise ValueError(
            f"Mllama has room for {MLLAMA_NEW_TOKENS} new tokens, not {cfg.fusion.num_new_tokens}"
        )
    if v.tile_grid > 1:
        raise ValueError(
            "this model reads tiles as a thumbnail plus a square grid (vision.tile_grid), which Mllama's "
            "aspect-ratio tiles do not express; export the untiled stage (tile_grid 1)"
        )
    if model.video is not None:
        raise ValueError(
            "this is a video model (config.video is set): Mllama has no video path, so its Perceiver "
            "Resampler and video cross-attention layers cannot be exported; export the image stage it was "
            "initialised from instead"
        )

    out: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        hub = _mllama_name(name, cfg.fusion.every)
        if hub is not None:
            out[hub] = param.detach()
    dtype = model.decoder.embed_tokens.weight.dtype

    def zeros(*shape: int) -> Tensor:  # a fresh tensor each: safetensors refuses shared storage
        return torch.zeros(*shape, dtype=dtype)

    new_rows = model.fusion.token_embedding.weight.detach()
    padding = zeros(MLLAMA_NEW_TOKENS - new_rows.shape[0], d.dim)
    out.update(
        {
            "language_model.model.embed_tokens.weight": torch.cat(
                [model.decoder.embed_tokens.weight.detach(), new_rows, padding]
            ),
            "language_model.lm_head.weight": model.decoder.lm_head.weight.detach(),
            "multi_modal_projector.weight": _projector_to_mllama(
                model.projection.proj.weight.detach(), v.dim, len(v.intermediate_layers)
            ),
        }
    )
    if v.max_num_tiles == 1:  # no tile tables: the [1, 1] ratio's, all zero, leave the model as it is
        tables = {
            "gated_positional_embedding.tile_embedding.weight": zeros(2, v.num_tokens * v.dim),
            "pre_tile_positional_embedding.embedding.weight": zeros(2, v.dim),
            "post_tile_positional_embedding.embedding.weight": zeros(2, v.dim),
        }
        for part in ("gated_positional", "pre_tile_positional", "post_tile_positional"):
            tables[f"{part}_embedding.gate"] = zeros(1)
        out.update({f"vision_model.{name}": tensor for name, tensor in tables.items()})
    return out


def export_mllama(model: FusionModel, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``model`` as an ``MllamaForConditionalGeneration`` checkpoint (config.json + safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = mllama_state_dict(model)
    save_safetensors(tensors, path, max_shard_bytes)
    config = mllama_config(model.config, model.decoder.embed_tokens.weight.dtype)
    with atomic_path(path / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return path


def _canonical_mllama_name(name: str) -> str:
    """transformers >= 4.52 in-memory names -> the hub names used here."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_model.", "vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def import_mllama(path: str | Path, dtype: torch.dtype = torch.float32, tiles: bool = False) -> FusionModel:
    """Load an ``MllamaForConditionalGeneration`` checkpoint as a FusionModel: with ``tiles`` one with the
    checkpoint's tiles (``vision.max_num_tiles``, tables kept as they are), else a single-tile one.

    Single tile:
    The tile embeddings for the [1, 1] aspect ratio are folded in: the pre-tile embedding and the gated
    tile position embedding into our position embedding, the post-tile embedding into the bias of the
    layer norm that follows the encoder. For a checkpoint with max_num_tiles > 1 this reproduces a
    single-tile image exactly as a 1-tile model would see it; transformers itself would pad such an image
    to max_num_tiles tiles, whose padding tokens its vision attention does not mask out.
    """
    cfg = model_config_from_mllama(read_config(path), tiles)
    model = _empty(lambda: FusionModel(cfg), dtype)
    assert isinstance(model, FusionModel)
    load_mllama(path, model)
    return model


def _mllama_keeps_init(name: str) -> bool:
    """Parameters Mllama has no place for: tile biases and view embeddings of a tiled stage, video."""
    return name.startswith("video.") or name.endswith(("tile_bias", "view_embedding"))


def load_mllama(path: str | Path, model: FusionModel) -> None:
    """Fill every parameter of ``model`` (built from the checkpoint's config, see ``import_mllama``)."""
    hf = read_config(path)
    cfg = model.config
    ckpt = Checkpoint(path)
    tensors = {_canonical_mllama_name(k): k for k in ckpt.keys()}

    def raw(name: str) -> Tensor:  # in the checkpoint's dtype: the large tables are not copied to fp32
        return ckpt[tensors[name]]

    def get(name: str) -> Tensor:
        return raw(name).float()

    v, d = cfg.vision, cfg.decoder
    max_tiles = hf["vision_config"].get("max_num_tiles", 4)
    ratios = hf["vision_config"].get("supported_aspect_ratios") or [[1, 1]]
    if v.max_num_tiles > 1 and max_tiles != v.max_num_tiles:
        raise ValueError(
            f"{path}: a {max_tiles}-tile checkpoint for a model with vision.max_num_tiles {v.max_num_tiles}"
        )
    if max_tiles > 1 and v.max_num_tiles == 1:
        warnings.warn(f"{path}: {max_tiles}-tile checkpoint imported as a single-tile model", stacklevel=2)
    ratio_id = ratios.index([1, 1]) + 1  # id 0 is padding
    tokens = v.grid_size**2 + 1

    def tile_part(prefix: str, shape: tuple[int, ...]) -> Tensor:
        gate = get(f"vision_model.{prefix}.gate").tanh()
        return gate * get(f"vision_model.{prefix}.embedding.weight")[ratio_id].view(max_tiles, *shape)[0]

    def position() -> Tensor:
        pos_gate = get("vision_model.gated_positional_embedding.gate").tanh()
        tile_pos = get("vision_model.gated_positional_embedding.tile_embedding.weight")[ratio_id]
        pos = (1 - pos_gate) * get("vision_model.gated_positional_embedding.embedding")
        pos = pos + pos_gate * tile_pos.view(max_tiles, tokens, v.dim)[0]
        pos[1:] += tile_part("pre_tile_positional_embedding", (v.dim,))
        return pos

    embed = tensors["language_model.model.embed_tokens.weight"]
    special: dict[str, Callable[[], Tensor]] = {  # read when their parameter is filled, one at a time
        "projection.proj.weight": lambda: _projector_from_mllama(
            get("multi_modal_projector.weight"), v.dim, len(v.intermediate_layers)
        ),
        "decoder.embed_tokens.weight": lambda: ckpt.rows(embed, 0, d.vocab_size),
        "fusion.token_embedding.weight": lambda: ckpt.rows(
            embed, d.vocab_size, d.vocab_size + MLLAMA_NEW_TOKENS
        ),
        "decoder.lm_head.weight": lambda: raw("language_model.lm_head.weight"),
    }
    if v.max_num_tiles == 1:  # fold the [1, 1] tile tables in
        special["encoder.position_embedding"] = position
        special["projection.ln_post.bias"] = lambda: (
            get("vision_model.layernorm_post.bias") + tile_part("post_tile_positional_embedding", (v.dim,))
        )
    # Parameters Mllama has no place for keep the model's own initialisation.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _mllama_keeps_init(name) or not holds_values(param):
                continue
            hub = _mllama_name(name, cfg.fusion.every)
            tensor = special[name]() if name in special else raw(hub)
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor)
