"""Mllama's image processing: an image -> up to ``max_num_tiles`` tiles of ``tile_size`` px, aspect kept.

The steps of transformers' ``MllamaImageProcessor`` (its defaults: bilinear resize, zero padding, CLIP's
mean and std), reimplemented so that the loader and curation share one path and its pixels equal
transformers' exactly:

1. the grid: among the (rows, columns) of ``supported_aspect_ratios``, the canvas of rows x columns tiles
   that needs the smallest upscale (or, when every canvas needs a downscale, the smallest downscale) for the
   image to fit without distortion; ties go to the smallest canvas area;
2. the resize: each side clipped to [tile_size, canvas side], then the image scaled by the limiting side's
   factor (aspect kept, the other side floored, at least 1 px), with Pillow's bilinear filter;
3. zero padding (of the 0..255 pixels, so padding is -mean/std after normalisation) on the right and bottom
   up to the canvas, normalisation with CLIP's mean and std, and the cut into tiles, row-major.

Batches carry tiles flat (``collate_tiles``): every image only its real tiles. ``pad_tiles`` gives the
padded (N, max_num_tiles, 3, S, S) layout and ``aspect_ratio_mask`` the vision model takes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vlmforge.training.model.config import CLIP_MEAN, CLIP_STD, VisionConfig

# A side this many times the other is not a photo worth reading (a strip, a separator, a broken header);
# Mllama would squeeze it to a 1 px line. Such images are refused with a reason instead.
MAX_ASPECT_RATIO = 32.0
# What Pillow raises for bytes that are not a whole, readable image.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

_MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


class BadImage(ValueError):
    """An image that cannot be tiled, with the reason."""


@dataclass(frozen=True)
class TiledImage:
    tiles: Tensor  # (rows * cols, 3, S, S), CLIP-normalised, row-major
    aspect_ratio_id: int  # 1-based index of grid in supported_aspect_ratios (0 is "no image")
    grid: tuple[int, int]  # (rows, cols)

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]


def supported_aspect_ratios(max_num_tiles: int) -> list[tuple[int, int]]:
    """(rows, cols) grids of at most `max_num_tiles` tiles, in transformers' order (VisionConfig's list)."""
    return VisionConfig(max_num_tiles=max_num_tiles).supported_aspect_ratios


def best_grid(height: int, width: int, max_num_tiles: int, tile_size: int) -> tuple[int, int]:
    """(rows, cols) of the canvas an image of height x width is fitted into (transformers'
    ``get_optimal_tiled_canvas``)."""
    grids = np.array(supported_aspect_ratios(max_num_tiles))
    scale_h = grids[:, 0] * tile_size / height
    scale_w = grids[:, 1] * tile_size / width
    scales = np.minimum(scale_h, scale_w)  # the limiting side: no distortion
    up = scales[scales >= 1]
    chosen = up.min() if up.size else scales.max()
    candidates = np.flatnonzero(scales == chosen)
    best = candidates[np.argmin(grids[candidates, 0] * grids[candidates, 1])]  # least padding
    return int(grids[best, 0]), int(grids[best, 1])


def fit_size(height: int, width: int, grid: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """(height, width) the image is resized to on a canvas of `grid` tiles (transformers'
    ``get_image_size_fit_to_canvas``)."""
    canvas_h, canvas_w = grid[0] * tile_size, grid[1] * tile_size
    target_h = min(max(height, tile_size), canvas_h)
    target_w = min(max(width, tile_size), canvas_w)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(int(np.floor(height * scale_w)) or 1, target_h), target_w
    return target_h, min(int(np.floor(width * scale_h)) or 1, target_w)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, transparent pixels on white (as transformers' ``convert_to_rgb``; a plain convert would show
    whatever colour the transparent pixels hold)."""
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def check_size(width: int, height: int) -> None:
    """Raise BadImage for an empty image or one too thin to read."""
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width} x {height})")
    ratio = max(width / height, height / width)
    if ratio > MAX_ASPECT_RATIO:
        raise BadImage(f"aspect ratio {width} x {height} is beyond {MAX_ASPECT_RATIO:g}:1")


def tile_image(img: Image.Image, tile_size: int, max_num_tiles: int) -> TiledImage:
    """A decoded image -> its tiles, grid and aspect_ratio_id (BadImage: empty or absurdly thin)."""
    check_size(*img.size)
    grid = best_grid(img.height, img.width, max_num_tiles, tile_size)
    height, width = fit_size(img.height, img.width, grid, tile_size)
    resized = np.asarray(to_rgb(img).resize((width, height), Image.Resampling.BILINEAR))
    rows, cols = grid
    canvas = np.zeros((rows * tile_size, cols * tile_size, 3), dtype=np.uint8)
    canvas[:height, :width] = resized
    # transformers' arithmetic (float64 rescale, then float32 normalisation), so pixels match it exactly
    pixels = (canvas.transpose(2, 0, 1).astype(np.float64) * (1 / 255)).astype(np.float32)
    pixels = (pixels - _MEAN) / _STD
    tiles = pixels.reshape(3, rows, tile_size, cols, tile_size).transpose(1, 3, 0, 2, 4)
    tiles = np.ascontiguousarray(tiles.reshape(rows * cols, 3, tile_size, tile_size))
    ratio_id = supported_aspect_ratios(max_num_tiles).index(grid) + 1
    return TiledImage(torch.from_numpy(tiles), ratio_id, grid)


def load_tiled_image(data: bytes, tile_size: int, max_num_tiles: int) -> TiledImage:
    """Decode image bytes and tile them; BadImage (with the reason) for bytes that do not decode too."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_size(*img.size)  # before decoding the pixels
            img.load()
            return tile_image(img, tile_size, max_num_tiles)
    except BadImage:
        raise
    except DECODE_ERRORS as e:
        raise BadImage(f"image does not decode: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------- batching


def collate_tiles(images: list[TiledImage | None], tile_size: int) -> dict[str, Tensor]:
    """Flat tiles of a batch: ``tiles`` (total real tiles, 3, S, S), ``num_tiles`` (N,) and
    ``aspect_ratio_ids`` (N,); a missing image has 0 tiles and id 0."""
    present = [im.tiles for im in images if im is not None]
    tiles = torch.cat(present) if present else torch.zeros(0, 3, tile_size, tile_size)
    return {
        "tiles": tiles,
        "num_tiles": torch.tensor([0 if im is None else im.num_tiles for im in images], dtype=torch.long),
        "aspect_ratio_ids": torch.tensor(
            [0 if im is None else im.aspect_ratio_id for im in images], dtype=torch.long
        ),
    }


def pad_tiles(flat: Tensor, counts: Tensor, max_num_tiles: int) -> tuple[Tensor, Tensor]:
    """Flat tiles (sum(counts), 3, S, S) -> pixel_values (N, max_num_tiles, 3, S, S), zero past each
    image's tiles, and aspect_ratio_mask (N, max_num_tiles), 1 on real tiles.

    An image with 0 tiles (no image) gets an all-zero mask, as the model's ``tile_mask_from_ids`` gives
    for id 0; transformers' processor marks tile 0 of its padding image slots, which no text token sees.
    """
    counts = counts.to(torch.long)
    if counts.dim() != 1 or int(counts.sum()) != flat.shape[0]:
        raise ValueError(f"pad_tiles: counts {counts.tolist()} do not add up to the {flat.shape[0]} tiles")
    if counts.numel() and (counts.min() < 0 or counts.max() > max_num_tiles):
        raise ValueError(f"pad_tiles: tile counts {counts.tolist()} must lie in 0..{max_num_tiles}")
    mask = torch.arange(max_num_tiles, device=counts.device) < counts[:, None]
    pixel_values = flat.new_zeros(len(counts), max_num_tiles, *flat.shape[1:])
    pixel_values[mask.to(flat.device)] = flat  # mask is row-major, as the flat tiles are
    return pixel_values, mask.long()
