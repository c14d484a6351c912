"""Learned masks (``masks.source='learned'``): objects discovered from the network's features.

Inside the jitted step (docs/learned_masks.md): a discovery network (the target network, a
separate EMA of the online network, or the online network; ``masks.learned.network``) encodes
the window covering both views (``batch['cover']``, emitted by the input pipeline) in
inference mode (BatchNorm with its moving statistics, no gradients); the feature map of the
chosen block group is clustered per image with k-means (``detcon_jax.kmeans``); the cluster
map is carried into each view through that view's box and flip relative to the covering
window (nearest neighbour), giving the integer segmentations ``[B, S, S, 1]`` that the usual
DetCon objective (``masks.binary_masks``, sampling, pooling, loss) takes unchanged. The first
``bootstrap_steps`` steps use the batch's own masks (FH or grid) instead, switched on the step
number inside the compiled step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detcon_jax import kmeans as kmeans_lib

__all__ = ["KMEANS_SALT", "carry_into_view", "cluster_cover", "discovery_features",
           "view_segmentations", "with_learned_masks"]

# fold_in(step key, KMEANS_SALT) seeds the k-means++ draw: a key of its own that leaves the
# step's other draws (augmentation, mask ids) as they are for every other mask source.
KMEANS_SALT = 0x6B6D


def carry_into_view(cluster_map: jax.Array, box: jax.Array, flip: jax.Array, size: int
                    ) -> jax.Array:
    """Resamples cover-window ids into a view (nearest neighbour): ``[B, S, S, 1]`` int32.

    Args:
      cluster_map: integer ``[B, h, w]`` ids on a grid over the covering window.
      box: float ``[B, 4]``: the view's window ``(top, left, height, width)`` as fractions of
        the covering window (``cover_box1/2`` of the batch).
      flip: ``[B]`` nonzero where the view is flipped left-right.
      size: the view's side S.

    View pixel ``(i, j)`` takes the id of the grid cell under its centre, at fraction
    ``top + (i + 1/2) / S * height`` of the covering window (likewise for the columns,
    counted from the right edge of the window when flipped).
    """
    _, h, w = cluster_map.shape
    t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size  # [S]
    box = box.astype(jnp.float32)
    flipped = (flip != 0)[:, None]
    u = jnp.where(flipped, 1.0 - t[None], t[None])  # [B, S]
    rows = box[:, 0:1] + t[None] * box[:, 2:3]
    cols = box[:, 1:2] + u * box[:, 3:4]
    rows = jnp.clip(jnp.floor(rows * h).astype(jnp.int32), 0, h - 1)
    cols = jnp.clip(jnp.floor(cols * w).astype(jnp.int32), 0, w - 1)
    gather = jax.vmap(lambda m, r, c: m[r[:, None], c[None, :]])
    return gather(cluster_map.astype(jnp.int32), rows, cols)[..., None]


def discovery_features(network: nn.Module, variables: Mapping[str, Any], images: jax.Array,
                       *, layer: int = 4) -> jax.Array:
    """Feature map ``[B, h, w, C]`` (float32, no gradient) of block group ``layer`` (1-4) of
    ``network``'s encoder on ``images`` ``[B, H, W, 3]`` in [0, 1], in inference mode.

    ``network`` is a ``DetConNetwork`` with one view per example; the output of the group is
    captured with Flax's ``capture_intermediates`` (the heads are skipped: no masks given).
    """
    name = f"block_group_{layer - 1}"
    _, state = network.apply(
        variables, images, None, train=False, mutable=["intermediates"],
        capture_intermediates=lambda module, method: (
            method == "__call__" and module.name == name))
    features = state["intermediates"]["encoder"][name]["__call__"][0]
    return jax.lax.stop_gradient(features.astype(jnp.float32))


def cluster_cover(config: Any, network: nn.Module, variables: Mapping[str, Any],
                  key: jax.Array, cover: jax.Array) -> jax.Array:
    """The cluster map ``[B, h, w]`` int32 of the covering windows (``masks.learned``)."""
    lm = config.masks.learned
    features = discovery_features(network, variables, cover, layer=lm.layer)
    assignments, _ = kmeans_lib.kmeans(key, features, num_clusters=lm.num_clusters,
                                       iterations=lm.iterations, distance=lm.distance)
    return assignments


def view_segmentations(config: Any, network: nn.Module, variables: Mapping[str, Any],
                       rng: jax.Array, step: jax.Array, batch: Mapping[str, jax.Array]
                       ) -> tuple[jax.Array, jax.Array]:
    """Both views' segmentations ``[B, S, S, 1]`` int32 for ``masks.source='learned'``.

    Steps before ``masks.learned.bootstrap_steps`` return the batch's ``mask1``/``mask2``
    (the bootstrap source's masks); later steps the carried cluster maps. The switch is a
    ``lax.cond`` on ``step`` (one compiled program; the discovery forward runs only after
    the switch).

    Args:
      config: the experiment config.
      network: the discovery ``DetConNetwork`` (one view per example).
      variables: its ``params`` and ``batch_stats``.
      rng: the step's key (k-means++ uses ``fold_in(rng, KMEANS_SALT)``).
      step: the step number (scalar int).
      batch: ``cover``, ``cover_box1/2``, ``cover_flip1/2``, ``mask1``, ``mask2``.
    """
    size = batch["mask1"].shape[1]

    def learned():
        ids = cluster_cover(config, network, variables, jax.random.fold_in(rng, KMEANS_SALT),
                            batch["cover"].astype(jnp.float32))
        return tuple(carry_into_view(ids, batch[f"cover_box{v}"], batch[f"cover_flip{v}"], size)
                     for v in (1, 2))

    def bootstrap():
        return tuple(batch[f"mask{v}"].astype(jnp.int32) for v in (1, 2))

    if config.masks.learned.bootstrap_steps <= 0:
        return learned()
    return jax.lax.cond(step < config.masks.learned.bootstrap_steps, bootstrap, learned)


def with_learned_masks(config: Any, network: nn.Module, variables: Mapping[str, Any],
                       rng: jax.Array, step: jax.Array, batch: Mapping[str, jax.Array]
                       ) -> dict[str, jax.Array]:
    """``batch`` with ``mask1``/``mask2`` replaced by `view_segmentations` (what the train
    step samples its mask ids from; also the masks to draw in a picture of the step)."""
    seg1, seg2 = view_segmentations(config, network, variables, rng, step, batch)
    return {**batch, "mask1": seg1, "mask2": seg2}
