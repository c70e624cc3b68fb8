"""Model configuration: one dataclass per component, the presets at the bottom.

The dataclass defaults are the shapes of Llama-3.2-11B-Vision; every preset starts from them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Label of the positions that take no loss (the default ignore_index of F.cross_entropy).
IGNORE_INDEX = -100


# CLIP's image normalisation (OpenAI's mean and std), which Mllama's image processor uses too: the data
# pipeline normalises every image with it (training/data.py).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """ViT image encoder (conv patches, class token, learned positions, pre-norm blocks)."""

    image_size: int = 560  # resolution the position embedding is stored at; other sizes interpolate
    patch_size: int = 14
    num_channels: int = 3
    dim: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_dim: int = 5120
    act: str = "gelu"  # "gelu" (Mllama), "quick_gelu" (OpenAI CLIP) or "gelu_pytorch_tanh" (SigLIP)
    norm_eps: float = 1e-5
    attn_bias: bool = False  # CLIP has q/k/v/o biases, Mllama has none
    # SigLIP's tower has no class token, a bias on the patch convolution and no layer norm before the blocks
    class_token: bool = True
    patch_bias: bool = False
    pre_norm: bool = True
    # The normalisation the encoder's weights expect (its image processor's); images arrive normalised with
    # CLIP's, and the encoder converts them where these differ (SigLIP: 0.5 and 0.5).
    pixel_mean: tuple[float, ...] = CLIP_MEAN
    pixel_std: tuple[float, ...] = CLIP_STD
    # 0-based indices of the blocks whose INPUTS feed the projection head next to the final output (Meta's
    # reference, torchtune, vLLM and transformers 4.x; index 0 is the embedding after ln_pre).
    intermediate_layers: tuple[int, ...] = (3, 7, 15, 23, 30)
    # Mllama pads the token sequence to a multiple of 8 and lets real tokens attend to the padding
    # (see vision.py); 8 reproduces it exactly, 1 is a plain ViT (CLIP).
    pad_to_multiple: int = 8
    # Higher resolution without stretching the encoder: with tile_grid g > 1 an image of g * image_size px
    # is read as g * g tiles of image_size px plus a thumbnail of the whole image (vision.split_views).
    tile_grid: int = 1
    # Mllama's aspect-ratio tiles (model/tiles.py): an image arrives as up to max_num_tiles tiles of
    # image_size px with its aspect_ratio_id; 1 is the single-tile model (no tile embeddings).
    max_num_tiles: int = 1

    def __post_init__(self) -> None:
        for name in ("tile_grid", "max_num_tiles"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"vision.{name} must be an integer >= 1, got {value!r}")
        if self.tile_grid > 1 and self.max_num_tiles > 1:
            raise ValueError(
                f"vision.tile_grid ({self.tile_grid}) and vision.max_num_tiles ({self.max_num_tiles}) are "
                "two ways of tiling an image; set one of them to 1"
            )
        if self.max_num_tiles > 1 and not (self.class_token and self.pre_norm):
            raise ValueError("vision.max_num_tiles > 1 (Mllama's tiles) needs class_token and pre_norm")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per view: the patches and the class token, if any (before padding)."""
        return self.grid_size**2 + int(self.class_token)

    @property
    def num_views(self) -> int:
        """Encoder passes per image: 1, or the thumbnail and the tiles."""
        return 1 if self.tile_grid == 1 else 1 + self.tile_grid**2

    @property
    def supported_aspect_ratios(self) -> list[tuple[int, int]]:
        """Mllama's tile grids with at most max_num_tiles tiles, as (rows, columns) in the order of its image
        processor: aspect_ratio_id i + 1 selects entry i (id 0: no image)."""
        n = self.max_num_tiles
        return [(w, h) for w in range(1, n + 1) for h in range(1, n + 1) if w * h <= n]

    @property
    def input_size(self) -> int:
        """Side of the images the model takes, in pixels."""
        return self.image_size * self.tile_grid


@dataclass
class ProjectionConfig:
    """Projection head: gated self-attention layers on the ViT output, multi-layer concat, linear map."""

    num_layers: int = 8
    gate_init: float = math.pi / 4  # Mllama's global layers start at tanh(pi/4), not at zero


@dataclass
class RopeScaling:
    """Llama 3 RoPE frequency scaling (``rope_type: llama3`` in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class DecoderConfig:
    """Llama decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU)."""

    vocab_size: int = 128256
    dim: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int | None = None  # None: dim // num_heads
    mlp_dim: int = 14336
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = field(default_factory=RopeScaling)
    max_seq_len: int = 131072
    tie_embeddings: bool = False
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128001
    pad_token_id: int | None = 128004

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.dim // self.num_heads


@dataclass
class FusionConfig:
    """Gated cross-attention adapters and the extra token table."""

    # A cross-attention block runs before decoder block i when (i + 1) % every == 0: blocks 3, 7, 11, ...
    # for every=4, the placement of Llama 3.2 Vision (Mllama layer indices 3, 8, 13, ...).
    every: int = 4
    # Rows of the small trainable table for new special tokens (ids vocab_size, vocab_size + 1, ...).
    # Mllama's embedding table has vocab_size + 8 rows; the image token is the first new id.
    num_new_tokens: int = 8
    # With tiles, every cross-attention block adds a learned bias to its attention logits on the tiles'
    # tokens. Starting below zero, the adapters first look mostly at the thumbnail, which is what the
    # previous stage showed them (one image at image_size), and learn how much to look at the tiles.
    tile_bias_init: float = -2.0


@dataclass
class VideoConfig:
    """Video path: frame sampling, Perceiver Resampler, video cross-attention layers."""

    num_frames: int = 64  # every video is resampled (uniformly, in time) to this many frames
    group_size: int = 32  # consecutive frames merged into one set of latents
    num_latents: int = 64
    num_layers: int = 2
    num_heads: int = 32
    mlp_ratio: int = 4
    # A video cross-attention block runs before image cross-attention layer j when (j + 1) % every == 0.
    every: int = 4

    @property
    def num_groups(self) -> int:
        return self.num_frames // self.group_size


@dataclass
class TrainableConfig:
    """Which components train; the rest get ``requires_grad=False``."""

    encoder: bool = True
    projection: bool = True
    decoder: bool = False
    fusion: bool = True
    video: bool = True


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    video: VideoConfig | None = None
    trainable: TrainableConfig = field(default_factory=TrainableConfig)

    @property
    def image_token_id(self) -> int:
        return self.decoder.vocab_size

    @property
    def video_token_id(self) -> int:
        return self.decoder.vocab_size + 1

    @property
    def num_fusion_layers(self) -> int:
        return self.decoder.num_layers // self.fusion.every

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``asdict`` output, e.g. after a JSON round trip."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = [t for t in options if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            value = _from_dict(nested[0], value)
        elif typing.get_origin(hint) is tuple and value is not None:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- presets


def tiny() -> ModelConfig:
    """A few-hundred-thousand-parameter model with the 11B's structure, for tests on a CPU."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=32,
            patch_size=8,
            dim=64,
            num_layers=4,
            num_heads=4,
            mlp_dim=128,
            intermediate_layers=(1, 3),  # the inputs of blocks 1 and 3: the outputs of blocks 0 and 2
        ),
        projection=ProjectionConfig(num_layers=2),
        decoder=DecoderConfig(
            vocab_size=512,
            dim=64,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=160,
            rope_theta=10000.0,
            rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=64),
            max_seq_len=512,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=None,
        ),
        fusion=FusionConfig(every=2),
    )


def small() -> ModelConfig:
    """``tiny``'s structure at about 30M parameters and 224 px (patch 16): for a short GPU run at a
    resolution where table cells and equation symbols stay legible (benchmarks/mix_recipe.py)."""
    cfg = tiny()
    cfg.vision = dataclasses.replace(
        cfg.vision, image_size=224, patch_size=16, dim=384, num_layers=6, num_heads=6, mlp_dim=1536,
        intermediate_layers=(2, 4),
    )  # fmt: skip
    cfg.decoder = dataclasses.replace(
        cfg.decoder, dim=384, num_layers=6, num_heads=6, num_kv_heads=2, mlp_dim=1024, head_dim=None
    )
    return cfg


def tiny_video() -> ModelConfig:
    """``tiny`` with the video path (64 frames in groups of 32, 8 latents a group)."""
    cfg = tiny()
    cfg.video = VideoConfig(num_latents=8, num_layers=1, num_heads=4, every=2)
    return cfg


def llama32_11b() -> ModelConfig:
    """Llama-3.2-11B-Vision: Llama 3.1 8B decoder, ViT-H/14 at 560 px, 8 cross-attention layers."""
    return ModelConfig()


def llama32_90b() -> ModelConfig:
    """Llama-3.2-90B-Vision: Llama 3.1 70B decoder, same ViT, 20 cross-attention layers."""
    return ModelConfig(
        decoder=DecoderConfig(dim=8192, num_layers=80, num_heads=64, num_kv_heads=8, mlp_dim=28672),
    )


PRESETS = {
    "tiny": tiny,
    "small": small,
    "tiny_video": tiny_video,
    "llama32_11b": llama32_11b,
    "llama32_90b": llama32_90b,
}


def get_config(name: str) -> ModelConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
