"""Bytes of a batch of Mllama tiles, flat (the loader's form) against padded to max_num_tiles per image.

The grid of each image comes from ``tiling.best_grid``; the mix of image sizes is a stated one of common
web and camera sizes (``MIX``), not measured from a data set. A batch of float32 tiles costs 3 * S * S * 4
bytes per tile; flat ships the real tiles, padded ships max_num_tiles per image.

    .venv/bin/python benchmarks/tile_batches.py --tile-size 560 --max-num-tiles 4 --batch 32
"""

from __future__ import annotations

import argparse

import numpy as np

from vlmforge.training.model.tiling import best_grid

# (width, height, weight): landscape photos dominate, then squares, phone portraits, banners
MIX = [
    (640, 480, 0.20),  # 4:3 (COCO-like)
    (1024, 683, 0.15),  # 3:2 (camera)
    (1920, 1080, 0.12),  # 16:9
    (800, 800, 0.15),  # 1:1 (products, avatars)
    (1080, 1350, 0.08),  # 4:5 (social)
    (1080, 1920, 0.08),  # 9:16 (phone)
    (480, 640, 0.08),  # 3:4
    (1200, 400, 0.07),  # 3:1 banner
    (300, 200, 0.07),  # thumbnails
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tile-size", type=int, default=560)
    parser.add_argument("--max-num-tiles", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s, t = args.tile_size, args.max_num_tiles
    tiles = {}
    print(f"{'size':>10} {'grid':>6} {'weight':>6}")
    for w, h, p in MIX:
        rows, cols = best_grid(h, w, t, s)
        tiles[(w, h)] = rows * cols
        print(f"{w:>5}x{h:<4} {rows}x{cols:<4} {p:6.2f}")
    weights = np.array([p for *_, p in MIX])
    counts = np.array([tiles[(w, h)] for w, h, _ in MIX])
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(MIX), size=(args.batches, args.batch), p=weights / weights.sum())
    real = counts[picks].sum(axis=1)
    per_tile = 3 * s * s * 4
    flat, padded = real.mean() * per_tile, args.batch * t * per_tile
    print(f"mean tiles per image {counts @ weights / weights.sum():.2f} of {t}")
    print(
        f"batch of {args.batch}: flat {flat / 2**20:.1f} MiB (max {real.max() * per_tile / 2**20:.1f}), "
        f"padded {padded / 2**20:.1f} MiB, flat/padded {flat / padded:.2f}"
    )


if __name__ == "__main__":
    main()
