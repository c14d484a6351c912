"""Generated images of coloured rectangles and ellipses with their id maps (for tests and
smoke runs; nothing is read from disk)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from detcon_jax.data.sources import base


def synthetic_images(num_images: int, height: int = 128, width: int = 160, *, seed: int = 0,
                     max_shapes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Images of coloured rectangles/ellipses on a coloured background, with their id maps.

    Returns uint8 images ``[N, H, W, 3]`` and uint8 id maps ``[N, H, W]`` (0 = background,
    shape k drawn later overwrites earlier ones).
    """
    rng = np.random.default_rng(seed)
    images = np.zeros([num_images, height, width, 3], np.uint8)
    ids = np.zeros([num_images, height, width], np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for n in range(num_images):
        num_shapes = rng.integers(2, max_shapes + 1)
        colours = rng.permutation(np.stack(np.meshgrid(*[np.linspace(20, 235, 4)] * 3), -1)
                                  .reshape(-1, 3))[:num_shapes + 1].astype(np.uint8)
        images[n] = colours[0]
        for k in range(1, num_shapes + 1):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
            if rng.random() < 0.5:
                inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            else:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            images[n][inside] = colours[k]
            ids[n][inside] = k
    return images, ids


class SyntheticSource(base.ListedSource):
    """`synthetic_images` (decoded uint8, with their id maps as ground truth), generated from
    the pipeline's seed."""

    has_gt_masks = True

    def __init__(self, num_images: int = 64, shape: tuple[int, int] = (128, 160)):
        self.num_images, self.shape = num_images, tuple(shape)

    @classmethod
    def from_config(cls, data: Any, masks: Any = None) -> SyntheticSource:
        del masks
        return cls(data.synthetic_num_images)

    def num_examples(self) -> int:
        return self.num_images

    def listing(self, shard: base.Shard, *, shuffle_files: bool,
                seed: int) -> tuple[tf.data.Dataset, Callable[..., base.Example]]:
        del shuffle_files
        images, ids = synthetic_images(self.num_images, *self.shape, seed=seed)
        index = shard.select(range(self.num_images), "synthetic images")
        names = [f"synthetic:{i}" for i in index]
        ds = tf.data.Dataset.from_tensor_slices(
            (images[index], ids[index][..., None], np.full(len(index), -1, np.int32), names))
        return ds, lambda image, mask, label, name: base.example(image, mask, label, name)
