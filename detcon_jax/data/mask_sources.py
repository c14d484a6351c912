"""Mask sources: the full-resolution id map each example carries into the two views.

``mask_source`` (``config.masks.source``):

* ``fh``: Felzenszwalb-Huttenlocher segments, read from the records where the source stores
  them (ImageNet-FH), otherwise computed on the fly from the decoded image (scikit-image's
  ``felzenszwalb``, through ``tf.numpy_function``).
* ``gt``: ground-truth id maps, loaded by the source itself.
* ``grid``: an n x n grid laid over the original image before cropping, so that ids
  correspond across views.
* ``none``: all-zero masks, for BYOL/SimCLR (the batch structure stays the same).

``config.masks.source='learned'`` is made on device (``detcon_jax.learned_masks``); its
batches carry the masks of ``masks.learned.bootstrap_source`` (``fh`` or ``grid``) from here.

A new mask source is one more branch of `make_mask_fn` (and its name in `MASK_SOURCES` and in
``config.MASK_SOURCES``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from detcon_jax.data import decode

MASK_SOURCES = ("fh", "gt", "grid", "none")

Example = dict[str, tf.Tensor]


def grid_mask(shape: tf.Tensor, grid_size: int) -> tf.Tensor:
    """uint8 ``[H, W, 1]``: ``grid_size`` x ``grid_size`` cells with row-major ids."""
    height, width = shape[0], shape[1]
    rows = tf.range(height) * grid_size // height
    cols = tf.range(width) * grid_size // width
    ids = rows[:, None] * grid_size + cols[None, :]
    return tf.cast(ids, tf.uint8)[..., None]


def felzenszwalb_numpy(image: np.ndarray, scale: float = 1000, min_size: int = 1000) -> np.ndarray:
    """skimage Felzenszwalb segmentation as uint8 ids (wrapping at 256, as official)."""
    import skimage.segmentation

    seg = skimage.segmentation.felzenszwalb(image, scale=scale, min_size=int(min_size))
    return seg.astype(np.uint8)


def felzenszwalb_tf(image: tf.Tensor, scale: float = 1000, min_size: int = 1000) -> tf.Tensor:
    """uint8 ``[H, W, 1]`` Felzenszwalb ids of a decoded uint8 image via ``tf.numpy_function``."""
    seg = tf.numpy_function(
        lambda x: felzenszwalb_numpy(x, scale, min_size), [image], tf.uint8, stateful=False)
    seg = tf.reshape(seg, tf.concat([tf.shape(image)[:2], [1]], 0))
    return seg


def check_mask_source(mask_source: str) -> None:
    """Raises ``ValueError`` naming ``mask_source`` unless it is one of `MASK_SOURCES`."""
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")


def make_mask_fn(mask_source: str, *, stored_fh: bool, grid_size: int = 4,
                 fh_scale: float = 1000, fh_min_size: int = 1000) -> Callable[[Example], Example]:
    """The per-example function that puts the ``mask_source`` id map into ``ex['mask']``.

    Args:
      mask_source: one of `MASK_SOURCES`.
      stored_fh: whether the source's examples already carry stored Felzenszwalb masks (for
        ``fh``, checked to be present) rather than none (computed here).
      grid_size: cells per side for ``grid``.
      fh_scale, fh_min_size: Felzenszwalb parameters of masks computed on the fly.

    The function takes and returns examples (``image``, ``mask``, ``label``, ``name``);
    computing FH replaces ``image`` by its decoded pixels, so that it is decoded once.
    """
    check_mask_source(mask_source)

    def mask_fn(ex: Example) -> Example:
        ex = dict(ex)
        if mask_source == "none":
            ex["mask"] = tf.zeros(tf.concat([decode.image_shape(ex["image"]), [1]], 0), tf.uint8)
        elif mask_source == "grid":
            ex["mask"] = grid_mask(decode.image_shape(ex["image"]), grid_size)
        elif mask_source == "fh" and not stored_fh:
            image = decode.decode_image(ex["image"])
            ex["image"] = image  # decode once; two_views accepts decoded images
            ex["mask"] = felzenszwalb_tf(image, fh_scale, fh_min_size)
        elif mask_source == "fh":
            check = tf.debugging.Assert(
                tf.size(ex["mask"]) > 0,
                ["Record has no image/felzenszwalb_segmentations:", ex["name"]])
            with tf.control_dependencies([check]):
                ex["mask"] = tf.identity(ex["mask"])
        return ex

    return mask_fn
