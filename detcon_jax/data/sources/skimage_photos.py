"""The colour photos bundled in scikit-image's package data directory (nothing to download)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from detcon_jax.data.sources import base

# Colour photographs shipped inside scikit-image's package data directory (grey-scale,
# synthetic and RGBA pictures left out).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)


def skimage_photo_paths() -> list[pathlib.Path]:
    """Paths of the `SKIMAGE_PHOTOS` present in this scikit-image installation."""
    import skimage

    root = pathlib.Path(skimage.data_dir)
    return [root / name for name in SKIMAGE_PHOTOS if (root / name).is_file()]


class SkimageSource(base.ListedSource):
    """`SKIMAGE_PHOTOS` from scikit-image's data directory, without labels or masks."""

    @classmethod
    def from_config(cls, data: Any, masks: Any = None) -> SkimageSource:
        del data, masks
        return cls()

    def num_examples(self) -> int:
        return len(skimage_photo_paths())

    def listing(self, shard: base.Shard, *, shuffle_files: bool,
                seed: int) -> tuple[tf.data.Dataset, Callable[..., base.Example]]:
        del shuffle_files, seed
        paths = [str(p) for p in skimage_photo_paths()]
        if not paths:
            import skimage

            raise FileNotFoundError(
                f"skimage source: none of {SKIMAGE_PHOTOS} found in {skimage.data_dir}")
        paths = shard.select(paths, "skimage photos")
        ds = tf.data.Dataset.from_tensor_slices(paths)
        return ds, lambda path: base.example(tf.io.read_file(path), None, -1, path)
