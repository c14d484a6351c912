"""Per-image k-means on device: a batch of feature maps -> a batch of cluster maps.

Pure jax.numpy, jit-able, vectorised over the batch with ``jax.vmap`` (no Python loop over
images) and a fixed number of Lloyd iterations (``lax.fori_loop``), so that the learned masks
(``detcon_jax.learned_masks``) cluster inside the jitted train step.

Algorithm, per image of ``N`` feature vectors:

* Distance: ``'euclidean'`` (squared Euclidean distance, centres are means) or ``'cosine'``
  (the vectors are L2-normalised first, distance ``1 - cos``, centres are the normalised means:
  spherical k-means).
* Initialisation: k-means++ (Arthur & Vassilvitskii 2007) from the image's key: the first
  centre is a uniformly drawn vector; each next one is drawn with probability proportional to
  its distance to the nearest centre chosen so far. When every vector already coincides with
  a centre (the image has fewer distinct vectors than ``K``), the remaining centres are drawn
  uniformly and repeat existing ones.
* Lloyd iterations: assign every vector to its nearest centre (ties -> the lowest cluster
  index), move each centre to its cluster's mean. A cluster left empty keeps its previous
  centre. A duplicated centre (see above) loses every tie to the lower index, so while its
  vectors are identical (the fewer-distinct case) its cluster stays empty. The result is
  deterministic for a given key.

The cluster indices of the result are ``[0, K)``; an image with ``n < K`` distinct vectors
uses exactly ``n`` of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["DISTANCES", "kmeans", "kmeans_plusplus_indices", "pairwise_distances"]

DISTANCES = ("cosine", "euclidean")
# Vectors closer than this (in the chosen distance) to a centre count as coinciding with it
# during the k-means++ draw; float32 rounding leaves ~1e-7 on identical vectors.
_COINCIDE = 1e-6


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"kmeans: distance must be one of {DISTANCES}, got {distance!r}")


def _prepare(x: jax.Array, distance: str) -> jax.Array:
    x = x.astype(jnp.float32)
    if distance == "cosine":
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def pairwise_distances(x: jax.Array, centres: jax.Array, distance: str) -> jax.Array:
    """``[N, C]``, ``[K, C]`` -> ``[N, K]`` distances (inputs already prepared: normalised
    for ``'cosine'``)."""
    dots = x @ centres.T
    if distance == "cosine":
        return 1.0 - dots
    sq = jnp.sum(x * x, axis=-1)[:, None] - 2.0 * dots + jnp.sum(centres * centres, axis=-1)
    return jnp.maximum(sq, 0.0)


def _plusplus_one(key: jax.Array, x: jax.Array, num_clusters: int, distance: str) -> jax.Array:
    """k-means++ centre indices ``[K]`` of one image's prepared vectors ``[N, C]``."""
    n = x.shape[0]
    keys = jax.random.split(key, num_clusters)
    first = jax.random.randint(keys[0], (), 0, n)
    indices = jnp.zeros((num_clusters,), jnp.int32).at[0].set(first)
    nearest = pairwise_distances(x, x[first][None], distance)[:, 0]

    def body(k, carry):
        indices, nearest = carry
        weight = jnp.where(nearest > _COINCIDE, nearest, 0.0)
        # Every vector coincides with a chosen centre: draw uniformly (a duplicate centre).
        logits = jnp.where(jnp.any(weight > 0), jnp.log(weight), jnp.zeros_like(weight))
        pick = jax.random.categorical(keys[k], logits).astype(jnp.int32)
        d = pairwise_distances(x, x[pick][None], distance)[:, 0]
        return indices.at[k].set(pick), jnp.minimum(nearest, d)

    indices, _ = jax.lax.fori_loop(1, num_clusters, body, (indices, nearest))
    return indices


def _flatten(features: jax.Array) -> jax.Array:
    if features.ndim == 4:
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3:
        raise ValueError(f"kmeans: features must be [B, N, C] or [B, h, w, C], got shape "
                         f"{features.shape}")
    return features


def kmeans_plusplus_indices(key: jax.Array, features: jax.Array, *, num_clusters: int,
                            distance: str = "cosine") -> jax.Array:
    """The initial centres `kmeans` uses: int32 ``[B, K]`` indices into each image's vectors.

    ``key`` is split into one key per image (``jax.random.split(key, B)``).
    """
    _check_distance(distance)
    return _plusplus(key, _prepare(_flatten(features), distance), num_clusters, distance)


def _plusplus(key: jax.Array, x: jax.Array, num_clusters: int, distance: str) -> jax.Array:
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, v: _plusplus_one(k, v, num_clusters, distance))(keys, x)


def _lloyd_one(x: jax.Array, centres: jax.Array, iterations: int, distance: str
               ) -> tuple[jax.Array, jax.Array]:
    num_clusters = centres.shape[0]

    def step(_, centres):
        assign = jnp.argmin(pairwise_distances(x, centres, distance), axis=-1)
        onehot = (assign[:, None] == jnp.arange(num_clusters)).astype(jnp.float32)
        counts = jnp.sum(onehot, axis=0)[:, None]
        means = (onehot.T @ x) / jnp.maximum(counts, 1.0)
        if distance == "cosine":
            norm = jnp.linalg.norm(means, axis=-1, keepdims=True)
            means = means / jnp.maximum(norm, 1e-12)
            # Opposite unit vectors can average to ~0: such a cluster keeps its centre too.
            counts = jnp.where(norm > 1e-6, counts, 0.0)
        return jnp.where(counts > 0, means, centres)

    centres = jax.lax.fori_loop(0, iterations, step, centres)
    assign = jnp.argmin(pairwise_distances(x, centres, distance), axis=-1).astype(jnp.int32)
    return assign, centres


def kmeans(key: jax.Array, features: jax.Array, *, num_clusters: int, iterations: int = 10,
           distance: str = "cosine", init: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
    """Clusters each image's feature vectors into ``num_clusters`` clusters.

    Args:
      key: PRNG key of the k-means++ initialisation (split into one key per image).
      features: ``[B, N, C]`` or ``[B, h, w, C]`` (cast to float32).
      num_clusters: K.
      iterations: Lloyd iterations after the initialisation (0: the k-means++ centres).
      distance: ``'cosine'`` or ``'euclidean'`` (see the module notes).
      init: optional int ``[B, K]`` indices of each image's initial centres (repeats
        allowed); None: k-means++ from ``key``.

    Returns:
      ``assignments`` int32 ``[B, N]`` (``[B, h, w]`` for a feature map) in ``[0, K)`` and
      ``centres`` float32 ``[B, K, C]`` (normalised for ``'cosine'``).
    """
    _check_distance(distance)
    if num_clusters < 1 or iterations < 0:
        raise ValueError(f"kmeans: num_clusters={num_clusters} must be >= 1 and "
                         f"iterations={iterations} >= 0")
    spatial = features.shape[1:-1]
    x = _prepare(_flatten(features), distance)
    if init is None:
        init = _plusplus(key, x, num_clusters, distance)
    elif init.shape != (x.shape[0], num_clusters):
        raise ValueError(f"kmeans: init must be [B={x.shape[0]}, K={num_clusters}], got "
                         f"{init.shape}")
    centres = jnp.take_along_axis(x, init[:, :, None], axis=1)
    assign, centres = jax.vmap(lambda v, c: _lloyd_one(v, c, iterations, distance))(x, centres)
    return assign.reshape((x.shape[0],) + spatial), centres
