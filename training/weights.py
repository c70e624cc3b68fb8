"""Consolidated safetensors weights: gathered from DeepSpeed (ZeRO-3 included), loaded across resolutions.

DeepSpeed checkpoints are for resuming; these files are what a stage hands to the next one (ZeRO-3
checkpoints have lost frozen weights, DeepSpeed issue 3090). A file holds the parameters a run trained, the
model config, and the files the run was initialised from, so ``load_fusion_model`` can rebuild the whole
model from the last file of a chain (text_lm -> clip -> stage 1 -> stage 2). A model built from HF
checkpoint dirs (``model.hf_decoder`` etc.) keeps their paths in its file and loads them first: the frozen
decoder is never copied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vlmforge.common.files import atomic_path
from vlmforge.training.model.build import build_fusion_model
from vlmforge.training.model.config import ModelConfig
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.vision import interpolate_position_embedding


def is_zero3(p: nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


def gathered(p: nn.Parameter, modifier_rank: int | None = None):
    """Context in which a ZeRO-3 partitioned parameter holds its full value (a no-op otherwise); with
    ``modifier_rank``, what that rank writes into it is partitioned again on exit."""
    if not is_zero3(p):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p], modifier_rank=modifier_rank)


def gather_tensors(module: nn.Module, keep: Callable[[str, nn.Parameter], bool]) -> dict[str, Tensor]:
    """Full CPU copies of the kept parameters; one parameter gathered at a time (collective on ZeRO-3)."""
    tensors = {}
    for name, p in module.named_parameters():
        if keep(name, p):
            with gathered(p):
                tensors[name] = p.detach().to("cpu", copy=True).contiguous()
    return tensors


def save_tensors(
    tensors: dict[str, Tensor],
    path: str | Path,
    config: ModelConfig | None,
    init_from: list[str],
    hf_sources: dict[str, str] | None = None,
) -> None:
    """Write atomically, with the model config, the init chain and the HF checkpoint dirs the model was
    built from (``model.hf_*``, absolute) in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parents = [str(Path(p).resolve()) for p in init_from]
    metadata = {"format": "pt", "init_from": json.dumps(parents)}
    if hf_sources:
        metadata["hf_sources"] = json.dumps(hf_sources)
    if config is not None:
        metadata["config"] = json.dumps(config.to_dict())
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_into(module: nn.Module, path: str | Path, strict_names: bool = True) -> list[str]:
    """Copy the tensors of `path` into `module` by name; position embeddings stored at another resolution
    are interpolated (stage 1 -> stage 2). Returns the names loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: weights file not found: {path}")
    params = dict(module.named_parameters())
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        unknown = [n for n in names if n not in params]
        if unknown and strict_names:
            raise KeyError(f"{path}: parameters not in this model: {unknown[:5]}")
        check_whole_video(path, names, params)
        with torch.no_grad():
            for name in names:
                if name not in params:
                    continue
                tensor, target = f.get_tensor(name), params[name]
                with gathered(target, modifier_rank=0):  # ZeRO-3: whole, then re-partitioned from rank 0
                    if tensor.shape != target.shape and name.endswith("position_embedding"):
                        g = int(round((target.shape[0] - 1) ** 0.5))
                        tensor = interpolate_position_embedding(tensor, (g, g))
                    if tensor.shape != target.shape:
                        raise ValueError(
                            f"{path}: {name} has shape {tuple(tensor.shape)}, model {tuple(target.shape)}"
                        )
                    target.copy_(tensor)
    return names


def check_whole_video(path: Path, names: list[str], params: dict[str, nn.Parameter]) -> None:
    """The video adapters train and are saved whole: a file with some of them but not all was written by
    an older model (e.g. before the perceiver's group embedding), whose missing tensors would silently
    stay at their random start."""
    if not any(n.startswith("video.") for n in names):
        return
    held = set(names)
    missing = [n for n in params if n.startswith("video.") and n not in held]
    if missing:
        raise ValueError(
            f"{path}: the video adapters lack {missing[:5]} (written by an older version of the model, "
            "before these tensors existed); retrain the video stage (configs/train/video.yaml) from its "
            "image-stage file"
        )


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_fusion_model(path: str | Path) -> FusionModel:
    """The fused model a training run left in `path`: its config, its init chain, then its own tensors."""
    meta = read_metadata(path)
    if "config" not in meta:
        raise ValueError(f"{path}: no model config in the metadata (not written by a vlm training run)")
    sources = hf_sources(path)
    for directory in sources.values():
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{path} was trained on the HF checkpoint {directory}, which is gone")
    model = build_fusion_model(ModelConfig.from_dict(json.loads(meta["config"])), sources)
    load_chain(model, path)
    return model


def hf_sources(path: str | Path) -> dict[str, str]:
    """The HF checkpoint dirs (``model.hf_*``) of the nearest file in `path`'s init chain that has them."""
    meta = read_metadata(path)
    if "hf_sources" in meta:
        return json.loads(meta["hf_sources"])
    for parent in reversed(json.loads(meta.get("init_from", "[]"))):
        if found := hf_sources(parent):
            return found
    return {}


def load_chain(module: nn.Module, path: str | Path, strict_names: bool = False) -> None:
    """Load the files `path` was initialised from (recursively, oldest first), then `path` itself.

    A run's file holds only what it trained: stage 1 with a frozen encoder leaves the encoder in the CLIP
    file its own file points to. ``strict_names`` applies to `path` only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: weights file not found: {path}")
    for parent in json.loads(read_metadata(path).get("init_from", "[]")):
        load_chain(module, parent)
    load_into(module, path, strict_names)
