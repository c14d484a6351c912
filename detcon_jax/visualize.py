"""Picture tool: a PNG grid of images with their masks and both augmented views with theirs.

Usage::

  python -m detcon_jax.visualize --source=skimage --mask_source=fh --num_images=4 \\
      --output=/tmp/detcon_masks.png
  python -m detcon_jax.visualize --source=imagenet_fh --data_dir=/data/imagenet_fh ...

Each row shows: the original image, the original with its mask overlaid, then view 1 and view 2
with their masks overlaid (as produced by ``data.two_views``). A mask id has the same
colour in every panel of a row, so a user can see which regions the two views share; region
borders are drawn in white.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from ml_collections import ConfigDict
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from detcon_jax import data as data_lib

COLUMNS = ("image", "image + mask", "view 1 + mask", "view 2 + mask")


def palette(num_ids: int = 256, seed: int = 0) -> np.ndarray:
    """Fixed random bright colours, float ``[num_ids, 3]`` in [0, 1], one per mask id."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.15, 1.0, size=(num_ids, 3))


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blends id colours into an image (float ``[H, W, 3]`` in [0, 1]) and marks borders.

    Returns uint8 ``[H, W, 3]``.
    """
    mask = np.asarray(mask).reshape(image.shape[:2]).astype(np.int64) % 256
    out = (1 - alpha) * image + alpha * palette()[mask]
    out[find_boundaries(mask, mode="inner")] = 1.0
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def _fit(image: np.ndarray, size: int) -> Image.Image:
    """Letterboxes an image into a ``size`` x ``size`` grey tile, keeping its aspect ratio."""
    pil = Image.fromarray(image)
    scale = size / max(pil.size)
    resample = Image.Resampling.NEAREST if image.ndim == 2 else Image.Resampling.BILINEAR
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                     resample)
    tile = Image.new("RGB", (size, size), (64, 64, 64))
    tile.paste(pil, ((size - pil.width) // 2, (size - pil.height) // 2))
    return tile


def render_rows(examples: Sequence[dict], *, image_size: int = 224, tile: int = 224,
                seed: int = 0) -> Image.Image:
    """Renders examples (``image`` bytes/uint8, ``mask`` uint8 ``[H, W, 1]``) as a grid."""
    header = 18
    grid = Image.new("RGB", (tile * len(COLUMNS), header + tile * len(examples)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(COLUMNS):
        draw.text((c * tile + 4, 3), title, fill=(255, 255, 255))
    for r, ex in enumerate(examples):
        image = data_lib.decode_image(ex["image"]).numpy()
        mask = np.asarray(ex["mask"])[..., 0]
        views = data_lib.two_views(image, ex["mask"], image_size=image_size,
                                         seed=tf.constant([seed, r], tf.int64))
        panels = [
            image,
            overlay(image / 255.0, mask),
            overlay(views["view1"].numpy(), views["mask1"].numpy()),
            overlay(views["view2"].numpy(), views["mask2"].numpy()),
        ]
        for c, panel in enumerate(panels):
            grid.paste(_fit(panel, tile), (c * tile, header + r * tile))
    return grid


def visualize(output: str | os.PathLike, data: Any, masks: Any, *, num_images: int = 4,
              tile: int = 224, seed: int = 0) -> str:
    """Writes the PNG grid for the first ``num_images`` of the source ``data`` (a
    ``config.data``) with the masks ``masks`` (a ``config.masks``) describes; returns its path.
    """
    ds = data_lib.source_dataset(data, masks, stats=data_lib.PipelineStats(), seed=seed)
    examples = [{k: v.numpy() for k, v in ex.items()} for ex in ds.take(num_images)]
    if not examples:
        raise ValueError(f"source {data.source!r} yielded no images")
    grid = render_rows(examples, image_size=data.image_size, tile=tile, seed=seed)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    return str(output)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.visualize",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="detcon_masks.png")
    parser.add_argument("--source", default="skimage", choices=tuple(data_lib.SOURCES))
    parser.add_argument("--mask_source", default="fh", choices=data_lib.MASK_SOURCES)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--split", default="train")
    parser.add_argument("--tfds_name", default="")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--tile", type=int, default=224, help="panel side in pixels")
    parser.add_argument("--grid_size", type=int, default=4)
    parser.add_argument("--fh_scale", type=float, default=1000)
    parser.add_argument("--fh_min_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # The config sections the data package reads, filled from the flags.
    data = ConfigDict(dict(
        source=args.source, path=args.data_dir, split=args.split, tfds_name=args.tfds_name,
        image_size=args.image_size, synthetic_num_images=64, fh_scale=args.fh_scale,
        fh_min_size=args.fh_min_size))
    masks = ConfigDict(dict(source=args.mask_source, grid_size=args.grid_size, fh_index=0))
    path = visualize(args.output, data, masks, num_images=args.num_images, tile=args.tile,
                     seed=args.seed)
    print(path)
    return path


if __name__ == "__main__":
    main()
