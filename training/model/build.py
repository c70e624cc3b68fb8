"""Building the fused model without a full fp32 copy of what checkpoints will overwrite.

``build_fusion_model`` constructs the whole model on the meta device (no memory, no initialisation), then
gives memory only to what it needs: the components that HF checkpoint dirs fill are allocated empty in the
run's dtype (bf16 under bf16 training) and filled tensor by tensor from the safetensors shards, which are
memory-mapped; the components that start from scratch are built as ``FusionModel`` builds them, in the same
order, so a model without HF sources is bit-identical to ``FusionModel(cfg)`` under the same seed.
Peak memory is the model in the run's dtype plus one checkpoint tensor, instead of the fp32 model built,
randomly initialised and then overwritten. Under ZeRO-3 (``partition``) the model is filled module by
module and each module becomes this rank's partitions as soon as it holds its values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlmforge.training.model.config import ModelConfig
from vlmforge.training.model.decoder import Decoder, init_weights
from vlmforge.training.model.fusion import FusionLayers, FusionModel, VideoFusion
from vlmforge.training.model.hf import load_hf_sources, loaded_parameters
from vlmforge.training.model.vision import VisionEncoder, VisionProjection

# FusionModel's components in the order its constructor builds them (the order of their random draws).
COMPONENTS = ("encoder", "projection", "decoder", "fusion", "video")


def _constructors(cfg: ModelConfig) -> dict[str, Callable[[], nn.Module]]:
    return {
        "encoder": lambda: VisionEncoder(cfg.vision),
        "projection": lambda: VisionProjection(cfg.vision, cfg.projection, cfg.decoder.dim),
        "decoder": lambda: Decoder(cfg.decoder),
        "fusion": lambda: FusionLayers(cfg),
        "video": lambda: VideoFusion(cfg),
    }


def build_meta(cfg: ModelConfig) -> FusionModel:
    """The model with every parameter on the meta device: shapes only."""
    with torch.device("meta"):
        return FusionModel(cfg)


def build_fusion_model(
    cfg: ModelConfig,
    sources: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
    load: Callable[[FusionModel, dict[str, str]], None] = load_hf_sources,
    partition: Callable[[list[nn.Parameter]], None] | None = None,
) -> FusionModel:
    """The fused model in ``dtype`` on the CPU, with the HF checkpoint dirs ``sources`` loaded by ``load``
    (``hf.load_hf_sources``: ``{"mllama": dir}`` or ``{"decoder": dir, "encoder": dir}``).

    With ``partition`` (ZeRO-3: turn parameters into this rank's partitions) the model is filled one
    module at a time, each module's parameters partitioned as soon as they hold their values, so a rank
    never holds more than one module's full tensors of what the sources fill.
    """
    sources = sources or {}
    model = build_meta(cfg)
    cfg = model.config
    loaded = loaded_parameters(model, sources)
    fresh = [
        c
        for c in COMPONENTS
        if getattr(model, c) is not None
        and any(n not in loaded for n, _ in getattr(model, c).named_parameters(prefix=c))
    ]
    # FusionModel's order: every constructor, then init_weights on all but the decoder (its own constructor
    # does it), so the random draws of a model without sources are those of FusionModel(cfg).
    constructors = _constructors(cfg)
    built = {c: constructors[c]() for c in fresh}
    for c in ("encoder", "projection", "fusion", "video"):
        if c in built:
            built[c].apply(init_weights)
    for c in COMPONENTS:
        module = getattr(model, c)
        if module is None:
            continue
        if c in built:
            setattr(model, c, built[c].to(dtype))
        elif partition is None:  # wholly overwritten by the sources: memory, no initialisation
            setattr(model, c, _empty(module, dtype))
    model.media_probe = torch.zeros((), dtype=dtype)
    model.set_trainable(cfg.trainable)
    if partition is None:
        if sources:
            load(model, sources)
    else:
        _fill_and_partition(model, sources, dtype, load, partition)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:  # a loader that skipped a parameter it was said to fill
        raise RuntimeError(f"parameters left without values: {meta[:5]}")
    return model


def _fill_and_partition(
    model: FusionModel,
    sources: dict[str, str],
    dtype: torch.dtype,
    load: Callable[[FusionModel, dict[str, str]], None],
    partition: Callable[[list[nn.Parameter]], None],
) -> None:
    """Module by module: give the meta parameters memory, fill them from the sources (the loaders skip
    parameters on meta or already partitioned), partition; a tied parameter is built once."""
    if sources:  # first what the sources fill in the components built from scratch (a CLIP tower's
        load(model, sources)  # post-norm in the projection head): nothing is on meta there
    built: dict[int, nn.Parameter] = {}
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        filled = False
        for name, p in own:
            if id(p) in built:
                setattr(module, name, built[id(p)])
            elif p.is_meta:
                new = nn.Parameter(torch.empty(p.shape, dtype=dtype), requires_grad=p.requires_grad)
                built[id(p)] = new
                setattr(module, name, new)
                filled = True
        if filled and sources:
            load(model, sources)
        partition([p for _, p in module.named_parameters(recurse=False) if not hasattr(p, "ds_id")])


def _empty(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` (on meta) given uninitialised CPU memory in ``dtype``; tied parameters stay tied."""
    first_names: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first_names:
            tied[name] = first_names[id(p)]
        else:
            first_names[id(p)] = name
    module = module.to(dtype).to_empty(device="cpu")
    for name, first in tied.items():
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner), attr, module.get_parameter(first))
    return module
