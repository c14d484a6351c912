"""Segmentation ids -> one-hot masks on the feature grid, mask sampling and masked pooling.

Everything here is pure jax.numpy, vectorised over the batch and jit-able.

Notes on faithfulness to the official DetCon code (``detcon_b.py``):

* ``binary_masks`` returns exactly what ``create_binary_mask`` returns (one-hot over
  ``max_mask_id`` ids, average-pooled by ``downsample`` with VALID padding, argmax per cell
  with ties going to the lowest id, one-hot again, laid out ``[B, max_mask_id, P]``). It
  counts pixels per (cell, id) as integers in one fused compare-and-reduce instead of
  materialising the float ``[B, H, W, max_mask_id]`` one-hot; dividing equal-sized cells'
  integer counts by the same constant cannot change an argmax, so the result is identical.
* ``sample_mask_ids`` gives ids absent from the grid probability exactly 0; the official
  code samples from ``log(exists + 1e-11)`` (normalised), a relative weight of 1e-11, i.e. a
  logit 25.3 below the present ids. Both use the Gumbel-max form of
  ``jax.random.categorical`` with the same key and sample layout, and float32 Gumbel noise
  spans at most about 20.4, so the official code can never draw an absent id either: for the
  same key the two draw the same ids (checked against the official ids under both
  threefry modes in ``tests/test_golden_aux.py``). The one exception: the official code
  adds its log-probability (~-log n) to the noise before the argmax, and that float32
  rounding can tie the two largest noisy logits, about once in a few million draws, where
  ours (adding 0) keeps their order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "binary_masks",
    "cell_ids",
    "gather_masks",
    "grid_segmentation",
    "masked_pool",
    "num_present_ids",
    "positive_fraction",
    "present_ids",
    "sample_mask_ids",
]


def binary_masks(
    segmentation: jax.Array, *, downsample: int, max_mask_id: int = 256
) -> jax.Array:
    """Turns per-pixel segment ids into one-hot masks on the downsampled feature grid.

    Args:
      segmentation: integer ids, ``[B, H, W]`` or ``[B, H, W, 1]`` (uint8 or any int dtype).
        Ids outside ``[0, max_mask_id)`` belong to no mask, as in the official code.
      downsample: side of the square pooling window (the encoder's total stride, 32 for a
        ResNet at 224 px). ``H`` and ``W`` must be multiples of it.
      max_mask_id: number of distinct ids (256 for uint8 segmentations).

    Returns:
      float32 ``[B, max_mask_id, (H // downsample) * (W // downsample)]`` with exactly one
      1 per grid cell (column): the id covering most pixels of that cell, ties going to the
      lowest id. Cells are in row-major order.
    """
    seg = jnp.asarray(segmentation)
    if seg.ndim == 4:
        if seg.shape[-1] != 1:
            raise ValueError(
                f"binary_masks: segmentation must be [B, H, W] or [B, H, W, 1], got shape "
                f"{seg.shape}")
        seg = seg[..., 0]
    if seg.ndim != 3:
        raise ValueError(
            f"binary_masks: segmentation must be [B, H, W] or [B, H, W, 1], got shape "
            f"{seg.shape}")
    if not jnp.issubdtype(seg.dtype, jnp.integer):
        raise ValueError(f"binary_masks: segmentation must hold integer ids, got {seg.dtype}")
    batch, height, width = seg.shape
    d = int(downsample)
    if d < 1 or height % d or width % d:
        raise ValueError(
            f"binary_masks: height {height} and width {width} must be multiples of "
            f"downsample={downsample}")
    h, w = height // d, width // d

    # [B, h, d, w, d] -> per-cell pixel blocks; widen uint8 so id 255 compares correctly
    # against arange(256) and negative/large ids never alias.
    cells = seg.astype(jnp.int32).reshape(batch, h, d, w, d)
    ids = jnp.arange(max_mask_id, dtype=jnp.int32)
    # XLA fuses the comparison into the reduction, so the per-pixel one-hot never exists.
    counts = jnp.sum(
        cells[..., None] == ids, axis=(2, 4), dtype=jnp.int32)  # [B, h, w, M]
    winner = jnp.argmax(counts.reshape(batch, h * w, max_mask_id), axis=-1)  # first max
    return (winner[:, None, :] == ids[None, :, None]).astype(jnp.float32)


def sample_mask_ids(
    rng: jax.Array, binary_masks: jax.Array, num_samples: int = 16
) -> jax.Array:
    """Draws ``num_samples`` mask ids per image, with replacement, uniformly among present ids.

    An id is present when its mask covers more than 1e-3 of a cell on the grid (the
    official threshold). Absent ids are never drawn (see the module notes). Use the same
    ``rng`` (or pass the returned ids) for the online and target networks of one view.

    Args:
      rng: PRNG key.
      binary_masks: ``[B, M, P]`` masks from :func:`binary_masks`.
      num_samples: ids per image (16 in DetCon).

    Returns:
      int32 ``[B, num_samples]``.
    """
    if binary_masks.ndim != 3:
        raise ValueError(
            f"sample_mask_ids: binary_masks must be [B, M, P], got shape {binary_masks.shape}")
    batch = binary_masks.shape[0]
    present = present_ids(binary_masks)
    logits = jnp.where(present, 0.0, -jnp.inf)
    # Same key use and sample layout as the official code: [num_samples, B] then transpose.
    ids = jax.random.categorical(rng, logits, axis=-1, shape=(num_samples, batch))
    return ids.T.astype(jnp.int32)


def present_ids(binary_masks: jax.Array) -> jax.Array:
    """bool ``[B, M]``: which ids of ``[B, M, P]`` masks cover more than 1e-3 of a cell (the
    official threshold of `sample_mask_ids`)."""
    return jnp.sum(binary_masks, axis=-1) > 1e-3


def num_present_ids(binary_masks: jax.Array) -> jax.Array:
    """int32 ``[B]``: distinct ids per image on the feature grid (those `sample_mask_ids`
    draws from)."""
    return jnp.sum(present_ids(binary_masks), axis=-1, dtype=jnp.int32)


def cell_ids(binary_masks: jax.Array) -> jax.Array:
    """int32 ``[B, P]``: the id of each feature-grid cell of one-hot ``[B, M, P]`` masks (the
    id map the loss pools over, e.g. for pictures of it)."""
    return jnp.argmax(binary_masks, axis=1).astype(jnp.int32)


def positive_fraction(ids1: jax.Array, ids2: jax.Array) -> jax.Array:
    """Fraction of the sampled regions ``[B, R]`` of both views whose id was also drawn for
    the same image in the other view.

    Those are the regions with a positive in DetCon's cross-view loss; the others have
    weight 0 there, so at 0 the loss is exactly 0 (e.g. a 1x1 feature grid, where each view
    has a single id and the two views rarely share it).
    """
    in_other = (ids1[:, :, None] == ids2[:, None, :]).any(-1)  # [B, R]: ids1 in ids2
    in_this = (ids2[:, :, None] == ids1[:, None, :]).any(-1)
    return (jnp.mean(in_other.astype(jnp.float32)) + jnp.mean(in_this.astype(jnp.float32))) / 2


def gather_masks(binary_masks: jax.Array, mask_ids: jax.Array) -> jax.Array:
    """Picks the masks named by ``mask_ids``: ``[B, M, P]``, ``[B, R]`` -> ``[B, R, P]``."""
    if binary_masks.ndim != 3 or mask_ids.ndim != 2:
        raise ValueError(
            f"gather_masks: expected binary_masks [B, M, P] and mask_ids [B, R], got "
            f"{binary_masks.shape} and {mask_ids.shape}")
    return jnp.take_along_axis(binary_masks, mask_ids[:, :, None], axis=1)


def masked_pool(features: jax.Array, masks: jax.Array) -> jax.Array:
    """Averages features inside each mask: ``sum(mask * feature) / max(area, 1)``.

    Args:
      features: ``[B, h, w, C]`` feature map or ``[B, P, C]`` with ``P = h * w`` (row-major).
      masks: ``[B, R, P]`` (0/1) masks on the same grid.

    Returns:
      ``[B, R, C]`` pooled vectors (zero for an empty mask).
    """
    if features.ndim == 4:
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3 or masks.ndim != 3 or masks.shape[-1] != features.shape[1]:
        raise ValueError(
            f"masked_pool: features [B, P, C] (or [B, h, w, C]) and masks [B, R, P] must "
            f"share P, got {features.shape} and {masks.shape}")
    area = jnp.sum(masks, axis=-1, keepdims=True)
    # Normalise before the matmul, like the official code.
    weights = (masks / jnp.maximum(area, 1.0)).astype(features.dtype)
    return jnp.einsum("brp,bpc->brc", weights, features)


def grid_segmentation(height: int, width: int, grid_size: int) -> jax.Array:
    """Spatial-heuristic segmentation: ``grid_size x grid_size`` cells with row-major ids.

    Cell ``(i, j)`` has id ``i * grid_size + j``; pixel row ``y`` lies in cell row
    ``y * grid_size // height`` (near-equal cells when the size does not divide evenly).

    Returns:
      int32 ``[height, width]``.
    """
    if grid_size < 1 or grid_size > min(height, width):
        raise ValueError(
            f"grid_segmentation: grid_size={grid_size} must be in [1, min(height, width)="
            f"{min(height, width)}]")
    rows = jnp.arange(height, dtype=jnp.int32) * grid_size // height
    cols = jnp.arange(width, dtype=jnp.int32) * grid_size // width
    return rows[:, None] * grid_size + cols[None, :]
