"""Self-supervised objectives: DetCon-B (official ``byol_nce_detcon``), DetCon-S, BYOL, SimCLR.

All functions take *global* arrays (under ``jit`` with sharded inputs the batch axis is the
whole global batch), so negatives come from every image of the global batch without any
collective or axis name. Losses are computed in float32 whatever the input dtype.

``detcon_b_loss`` is the training objective. It has the value and gradients of the official
formulation (ported plainly in ``detcon_b_loss_reference``) but never builds the
``[B, R, B, R]`` label tensors nor the concatenated ``[B, R, 2B, R]`` logits: positives only
exist on an image's own ROIs (``[B, R, R]``), and the normaliser is a log-sum-exp over all
ROIs of all images in both views, computed in chunks of images with rematerialisation so
that neither the forward nor the backward pass holds more than one chunk of logits.

Nothing here applies ``stop_gradient``: as in the official code the caller decides which
inputs carry gradients (BYOL/DetCon-B differentiate only the online network's outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "auto_num_chunks",
    "byol_loss",
    "detcon_b_loss",
    "detcon_b_loss_reference",
    "detcon_s_loss",
    "l2_normalize",
    "simclr_loss",
]

# Subtracted from logits that must not take part in the softmax (official value).
_INFINITY_PROXY = 1e9
# Default upper bound on the number of logits held at once by ``detcon_b_loss``
# (2**24 float32 = 64 MiB per chunk).
_DEFAULT_CHUNK_ELEMENTS = 2**24


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    """``x / max(||x||, sqrt(epsilon))`` along ``axis`` (official ``helpers.l2_normalize``)."""
    sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, epsilon))


def _check_inputs(name: str, embeddings: tuple[jax.Array, ...], ids: tuple[jax.Array, ...]):
    shape = embeddings[0].shape
    if len(shape) != 3:
        raise ValueError(f"{name}: embeddings must be [B, R, D], got shape {shape}")
    for e in embeddings:
        if e.shape != shape:
            raise ValueError(f"{name}: all embeddings must share shape {shape}, got {e.shape}")
    for i in ids:
        if i.shape != shape[:2]:
            raise ValueError(f"{name}: mask ids must be [B, R] = {shape[:2]}, got {i.shape}")


def _same_id(ids_a: jax.Array, ids_b: jax.Array) -> jax.Array:
    """``[B, R]``, ``[B, R]`` -> bool ``[B, R, R]``: ROI r of ``a`` and ROI s of ``b`` match."""
    return ids_a[:, :, None] == ids_b[:, None, :]


# --------------------------------------------------------------------------------------
# Reference formulation (direct port, materialises every [B, R, B, R] tensor).
# --------------------------------------------------------------------------------------


def detcon_b_loss_reference(
    pred1: jax.Array,
    pred2: jax.Array,
    target1: jax.Array,
    target2: jax.Array,
    pind1: jax.Array,
    pind2: jax.Array,
    tind1: jax.Array,
    tind2: jax.Array,
    *,
    temperature: float = 0.1,
    local_negatives: bool = True,
) -> jax.Array:
    """DetCon-B loss, written the way the official ``byol_nce_detcon`` computes it.

    Builds full ``[B, R, B, R]`` logits and labels for the four view pairings and
    concatenates them, so its memory grows as ``(B * R)**2``. Kept for tests and
    benchmarks; train with :func:`detcon_b_loss`. Arguments as in :func:`detcon_b_loss`.
    """
    _check_inputs("detcon_b_loss_reference", (pred1, pred2, target1, target2),
                  (pind1, pind2, tind1, tind2))
    batch, rois, _ = pred1.shape
    p1, p2, t1, t2 = (l2_normalize(x.astype(jnp.float32)) for x in (pred1, pred2, target1, target2))

    # same_image[b, 0, c, 0] = (b == c); same[b, r, 0, s] = ids match.
    same_image = jnp.eye(batch, dtype=jnp.float32)[:, None, :, None]

    def same(ia, ib):
        return _same_id(ia, ib).astype(jnp.float32)[:, :, None, :]

    def logits(x, y):
        return jnp.einsum("brk,csk->brcs", x, y) / temperature

    def one_direction(pred, t_other, t_same, pind, tind_other, tind_same):
        same_other = same_image * same(pind, tind_other)
        same_view = same_image * same(pind, tind_same)
        logits_other = logits(pred, t_other)
        logits_same = logits(pred, t_same) - _INFINITY_PROXY * same_view
        if not local_negatives:
            logits_other = logits_other - _INFINITY_PROXY * (same_image - same_other)
            logits_same = logits_same - _INFINITY_PROXY * (same_image - same_view)
        all_logits = jnp.concatenate([logits_other, logits_same], axis=2)
        all_logits = all_logits.reshape(batch, rois, -1)
        labels = jnp.concatenate([same_other, jnp.zeros_like(same_view)], axis=2)
        labels = labels.reshape(batch, rois, -1)
        num_positives = jnp.sum(labels, axis=-1, keepdims=True)
        labels = labels / jnp.maximum(num_positives, 1.0)
        duplicates = jnp.sum(_same_id(pind, pind), axis=-1).astype(jnp.float32)
        weights = (num_positives[..., 0] > 1e-3).astype(jnp.float32) / duplicates
        xent = -weights * jnp.sum(labels * jax.nn.log_softmax(all_logits), axis=-1)
        return jnp.mean(xent)

    return (one_direction(p1, t2, t1, pind1, tind2, tind1)
            + one_direction(p2, t1, t2, pind2, tind1, tind2))


# --------------------------------------------------------------------------------------
# Memory-lean formulation.
# --------------------------------------------------------------------------------------


def auto_num_chunks(
    batch: int, rois: int, *, num_devices: int = 1, max_elements: int = _DEFAULT_CHUNK_ELEMENTS
) -> int:
    """Chunk count for :func:`detcon_b_loss`: the fewest chunks whose logits fit a budget.

    Each chunk of ``batch // n`` images holds ``(batch // n) * rois * 2 * batch * rois``
    logits, spread over ``num_devices`` when the batch axis is sharded over that many
    devices (chunks are strided, so every device keeps its share of every chunk). Returns
    the smallest divisor ``n`` of ``batch`` whose per-device chunk has at most
    ``max_elements`` logits and whose chunk size is a multiple of ``num_devices``
    (``batch`` if none fits).

    Args:
      batch: global batch size.
      rois: ROIs (masks) per image.
      num_devices: devices the batch axis is sharded over (e.g. the mesh's data axis).
      max_elements: budget of float32 logits per device per chunk.
    """
    row_cost = rois * 2 * batch * rois  # logits per image of queries
    for aligned in (True, False):
        for n in range(1, batch + 1):
            if batch % n:
                continue
            rows = batch // n
            if aligned and rows % num_devices:
                continue
            if -(-rows // num_devices) * row_cost <= max_elements:
                return n
    return batch


def _chunked_logsumexp(
    queries: jax.Array,
    keys: jax.Array,
    own_bias: jax.Array,
    *,
    temperature: float,
    num_chunks: int,
) -> jax.Array:
    """Per-query log-sum-exp over every key ROI of every image, with own-image biases.

    Args:
      queries: ``[B, R, D]``.
      keys: ``[V, B, R, D]`` (V views of key ROIs).
      own_bias: ``[B, R, V, R]`` added to the logits of the query's own image.
      temperature: logits are ``q . k / temperature``.
      num_chunks: the batch is processed in this many chunks of images (must divide B).

    Returns:
      ``[B, R]``.
    """
    batch, rois, dim = queries.shape
    rows = batch // num_chunks
    image_index = jnp.arange(batch, dtype=jnp.int32)

    def chunk_lse(q, bias, q_images):
        # q [rows, R, D], bias [rows, R, V, R], q_images [rows].
        logits = jnp.einsum("jrk,vcsk->jrvcs", q, keys) / temperature
        own = (q_images[:, None] == image_index[None, :])[:, None, None, :, None]
        logits = logits + jnp.where(own, bias[:, :, :, None, :], 0.0)
        return jax.nn.logsumexp(logits, axis=(2, 3, 4))

    if num_chunks == 1:
        return chunk_lse(queries, own_bias, image_index)

    # Chunk k holds images {k, k + n, k + 2n, ...}: a strided split keeps every chunk spread
    # evenly over a batch-sharded array, so no device sits idle and nothing is resharded.
    def split(x):
        return jnp.swapaxes(x.reshape(rows, num_chunks, *x.shape[1:]), 0, 1)

    # Rematerialise each chunk's logits in the backward pass instead of storing them all.
    lse = jax.lax.map(
        lambda xs: jax.checkpoint(chunk_lse)(*xs),
        (split(queries), split(own_bias), split(image_index)))
    return jnp.swapaxes(lse, 0, 1).reshape(batch, rois)


def _lean_direction(pred, t_other, t_same, pind, tind_other, tind_same, *, temperature,
                    local_negatives, num_chunks):
    """One half of the symmetric loss: queries ``pred``, positives in ``t_other``."""
    same_other = _same_id(pind, tind_other)  # [B, R, R], own image only
    same_view = _same_id(pind, tind_same)
    zero = jnp.zeros(same_other.shape, jnp.float32)
    # Own-image logit adjustments, exactly the official masks restricted to the diagonal.
    bias_same = jnp.where(same_view, -_INFINITY_PROXY, zero)
    bias_other = zero
    if not local_negatives:
        bias_same = jnp.full_like(zero, -_INFINITY_PROXY)
        bias_other = jnp.where(same_other, zero, -_INFINITY_PROXY)
    own_bias = jnp.stack([bias_other, bias_same], axis=2)  # [B, R, 2, R]

    keys = jnp.stack([t_other, t_same])  # [2, B, R, D]
    lse = _chunked_logsumexp(pred, keys, own_bias, temperature=temperature,
                             num_chunks=num_chunks)

    own_logits = jnp.einsum("brk,bsk->brs", pred, t_other) / temperature
    num_positives = jnp.sum(same_other, axis=-1).astype(jnp.float32)
    positive_logit = (jnp.sum(jnp.where(same_other, own_logits, 0.0), axis=-1)
                      / jnp.maximum(num_positives, 1.0))
    duplicates = jnp.sum(_same_id(pind, pind), axis=-1).astype(jnp.float32)
    weights = (num_positives > 0).astype(jnp.float32) / duplicates
    # Rows without positives have weight 0 (and a finite lse), so they contribute nothing.
    return jnp.mean(weights * (lse - positive_logit))


def detcon_b_loss(
    pred1: jax.Array,
    pred2: jax.Array,
    target1: jax.Array,
    target2: jax.Array,
    pind1: jax.Array,
    pind2: jax.Array,
    tind1: jax.Array,
    tind2: jax.Array,
    *,
    temperature: float = 0.1,
    local_negatives: bool = True,
    num_chunks: int | None = None,
) -> jax.Array:
    """DetCon-B contrastive loss (official ``byol_nce_detcon``), memory-lean.

    For each view's prediction ROI, the positives are the other view's target ROIs of the
    same image with the same mask id (averaged when there are several), and the softmax
    runs over every target ROI of every image in both views, except that the same view's
    same-id ROIs of the own image are removed. Each ROI is weighted by 1 / (how often its
    id was drawn in its view) and by 0 when no positive exists. Summed over both views,
    averaged over ``B * R``.

    Args:
      pred1, pred2: online predictions ``[B, R, D]`` of view 1 and 2.
      target1, target2: target projections ``[B, R, D]``.
      pind1, pind2, tind1, tind2: int mask ids ``[B, R]`` of each of the above.
      temperature: softmax temperature.
      local_negatives: if False, the own image's ROIs other than the positives are removed
        from the softmax (official option).
      num_chunks: number of image chunks for the log-sum-exp (a divisor of ``B``); by
        default ``auto_num_chunks(B, R)``, which keeps each chunk within 2**24 logits on
        one device. With the batch sharded over N devices pass
        ``auto_num_chunks(B, R, num_devices=N)`` to use fewer, larger chunks.

    Returns:
      Scalar loss, equal in value and gradients to :func:`detcon_b_loss_reference`.
    """
    _check_inputs("detcon_b_loss", (pred1, pred2, target1, target2),
                  (pind1, pind2, tind1, tind2))
    batch, rois, _ = pred1.shape
    if num_chunks is None:
        num_chunks = auto_num_chunks(batch, rois)
    if num_chunks < 1 or batch % num_chunks:
        raise ValueError(f"detcon_b_loss: num_chunks={num_chunks} must divide batch size {batch}")
    p1, p2, t1, t2 = (l2_normalize(x.astype(jnp.float32)) for x in (pred1, pred2, target1, target2))
    kwargs = dict(temperature=temperature, local_negatives=local_negatives,
                  num_chunks=num_chunks)
    return (_lean_direction(p1, t2, t1, pind1, tind2, tind1, **kwargs)
            + _lean_direction(p2, t1, t2, pind2, tind1, tind2, **kwargs))


def detcon_s_loss(
    proj1: jax.Array,
    proj2: jax.Array,
    ind1: jax.Array,
    ind2: jax.Array,
    *,
    temperature: float = 0.1,
    num_chunks: int | None = None,
) -> jax.Array:
    """DetCon-S loss: the DetCon-B objective with one shared network, SimCLR-style.

    The projections of each view serve as both queries and keys (no predictor, no target
    network) and gradients flow through both sides.

    Args:
      proj1, proj2: projections ``[B, R, D]`` of view 1 and 2.
      ind1, ind2: int mask ids ``[B, R]``.
      temperature: softmax temperature.
      num_chunks: see :func:`detcon_b_loss`.
    """
    return detcon_b_loss(proj1, proj2, proj1, proj2, ind1, ind2, ind1, ind2,
                         temperature=temperature, num_chunks=num_chunks)


def _as_one_roi(x: jax.Array, name: str) -> jax.Array:
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name}: expected [B, D] or [B, 1, D], got shape {x.shape}")


def simclr_loss(proj1: jax.Array, proj2: jax.Array, *, temperature: float = 0.1) -> jax.Array:
    """SimCLR's NT-Xent loss (one mask per image), summed over both views' directions.

    Args:
      proj1, proj2: projections ``[B, D]`` or ``[B, 1, D]``.
      temperature: softmax temperature.
    """
    p1, p2 = _as_one_roi(proj1, "simclr_loss"), _as_one_roi(proj2, "simclr_loss")
    ids = jnp.zeros(p1.shape[:2], jnp.int32)
    return detcon_s_loss(p1, p2, ids, ids, temperature=temperature)


def byol_loss(
    pred1: jax.Array, pred2: jax.Array, target1: jax.Array, target2: jax.Array
) -> jax.Array:
    """BYOL's regression loss: ``||n(p1) - n(t2)||^2 + ||n(p2) - n(t1)||^2`` (= 4 - 2cos - 2cos).

    Inputs ``[B, D]`` or ``[B, 1, D]``; averaged over the batch (official BYOL).
    """
    def regression(x, y):
        diff = l2_normalize(x.astype(jnp.float32)) - l2_normalize(y.astype(jnp.float32))
        return jnp.sum(jnp.square(diff), axis=-1)

    p1, p2, t1, t2 = (_as_one_roi(x, "byol_loss") for x in (pred1, pred2, target1, target2))
    return jnp.mean(regression(p1, t2) + regression(p2, t1))
