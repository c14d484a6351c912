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

The paper's loss ablations are keyword arguments of the same functions (no separate code
path, so they keep its memory behaviour): ``local_negatives`` (official name; the other
masks of the query's own image as negatives), ``negatives_group_size`` (negatives from a
block of consecutive images of the batch only: the official ``use_replicator_loss=False``
when the block is the per-device batch; logits are only formed within a block) and
``cross_view`` (``False``: the contrast stays within each view, the "without two views"
ablation). ``docs/experiments.md`` ("Loss ablations") gives their definitions and sources.

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
    negatives_group_size: int | None = None,
) -> jax.Array:
    """DetCon-B loss, written the way the official ``byol_nce_detcon`` computes it.

    Builds full ``[B, R, B, R]`` logits and labels for the four view pairings and
    concatenates them, so its memory grows as ``(B * R)**2``. Kept for tests and
    benchmarks; train with :func:`detcon_b_loss`. Arguments as in :func:`detcon_b_loss`;
    ``negatives_group_size`` runs the official ``use_replicator_loss=False`` formulation:
    the function above on each group of consecutive images alone (on a pod, each device
    on its own batch), the groups' losses averaged as the official ``pmean`` does.
    """
    args = (pred1, pred2, target1, target2, pind1, pind2, tind1, tind2)
    _check_inputs("detcon_b_loss_reference", args[:4], args[4:])
    batch = pred1.shape[0]
    group = _group_size("detcon_b_loss_reference", batch, negatives_group_size)

    def one_group(*a):
        return _reference_one_group(*a, temperature=temperature, local_negatives=local_negatives)

    if group == batch:
        return one_group(*args)
    grouped = [x.reshape(batch // group, group, *x.shape[1:]) for x in args]
    return jnp.mean(jax.vmap(one_group)(*grouped))


def _reference_one_group(pred1, pred2, target1, target2, pind1, pind2, tind1, tind2, *,
                         temperature, local_negatives):
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


def _group_size(name: str, batch: int, negatives_group_size: int | None) -> int:
    """Images per negatives group (the whole batch when ``None``); raises on a bad size."""
    if negatives_group_size is None:
        return batch
    if (isinstance(negatives_group_size, bool) or not isinstance(negatives_group_size, int)
            or negatives_group_size < 1 or batch % negatives_group_size):
        raise ValueError(f"{name}: negatives_group_size={negatives_group_size!r} must be a "
                         f"positive divisor of batch size {batch}")
    return negatives_group_size


def auto_num_chunks(
    batch: int, rois: int, *, num_devices: int = 1, max_elements: int = _DEFAULT_CHUNK_ELEMENTS,
    negatives_group_size: int | None = None,
) -> int:
    """Chunk count for :func:`detcon_b_loss`: the fewest chunks whose logits fit a budget.

    Every query ROI is compared with the ``2 * G * rois`` key ROIs (two views) of the ``G``
    images of its negatives group (``G = batch``, or ``negatives_group_size``). A chunk
    takes ``1 / n`` of each group's query images, so it holds
    ``(batch // n) * rois * 2 * G * rois`` logits, spread over ``num_devices`` when the batch
    axis is sharded over that many devices (chunks are strided, so every device keeps its
    share of every chunk). Returns the smallest divisor ``n`` of ``G`` whose per-device
    chunk has at most ``max_elements`` logits and whose chunk size is a multiple of
    ``num_devices`` (``G`` if none fits).

    Args:
      batch: global batch size.
      rois: ROIs (masks) per image.
      num_devices: devices the batch axis is sharded over (e.g. the mesh's data axis).
      max_elements: budget of float32 logits per device per chunk.
      negatives_group_size: images per negatives group (see :func:`detcon_b_loss`);
        ``None`` = the whole batch.
    """
    group = _group_size("auto_num_chunks", batch, negatives_group_size)
    row_cost = rois * 2 * group * rois  # logits per image of queries
    for aligned in (True, False):
        for n in range(1, group + 1):
            if group % n:
                continue
            rows = batch // n
            if aligned and rows % num_devices:
                continue
            if -(-rows // num_devices) * row_cost <= max_elements:
                return n
    return group


def _chunked_logsumexp(
    queries: jax.Array,
    keys: jax.Array,
    own_bias: jax.Array,
    *,
    temperature: float,
    num_chunks: int,
    group_size: int,
) -> jax.Array:
    """Per-query log-sum-exp over every key ROI of every image of the query's group.

    Groups are consecutive blocks of ``group_size`` images; logits are only formed within
    a group (``[G, g, R, V, g, R]`` instead of ``[B, R, V, B, R]``), so smaller groups hold
    proportionally fewer logits.

    Args:
      queries: ``[B, R, D]``.
      keys: ``[V, B, R, D]`` (V views of key ROIs).
      own_bias: ``[B, R, V, R]`` added to the logits of the query's own image.
      temperature: logits are ``q . k / temperature``.
      num_chunks: each group's images are processed in this many chunks (must divide
        ``group_size``).
      group_size: images per negatives group (divides B).

    Returns:
      ``[B, R]``.
    """
    batch, rois, dim = queries.shape
    views = keys.shape[0]
    groups = batch // group_size
    rows = group_size // num_chunks
    q_all = queries.reshape(groups, group_size, rois, dim)
    k_all = keys.reshape(views, groups, group_size, rois, dim)
    bias_all = own_bias.reshape(groups, group_size, rois, views, rois)
    index_in_group = jnp.arange(group_size, dtype=jnp.int32)

    def chunk_lse(q, bias, q_index):
        # q [G, rows, R, D], bias [G, rows, R, V, R], q_index [rows] (position in the group).
        logits = jnp.einsum("gjrk,vgcsk->gjrvcs", q, k_all) / temperature
        own = (q_index[:, None] == index_in_group[None, :])[None, :, None, None, :, None]
        logits = logits + jnp.where(own, bias[:, :, :, :, None, :], 0.0)
        return jax.nn.logsumexp(logits, axis=(3, 4, 5))

    if num_chunks == 1:
        return chunk_lse(q_all, bias_all, index_in_group).reshape(batch, rois)

    # Chunk k holds images {k, k + n, k + 2n, ...} of every group: a strided split keeps every
    # chunk spread evenly over a batch-sharded array, so no device sits idle and nothing is
    # resharded.
    def split(x):
        x = x.reshape(groups, rows, num_chunks, *x.shape[2:])
        return jnp.moveaxis(x, 2, 0)

    # Rematerialise each chunk's logits in the backward pass instead of storing them all.
    lse = jax.lax.map(
        lambda xs: jax.checkpoint(chunk_lse)(*xs),
        (split(q_all), split(bias_all), index_in_group.reshape(rows, num_chunks).T))
    return jnp.moveaxis(lse, 0, 2).reshape(batch, rois)


def _lean_direction(pred, t_pos, t_extra, pind, tind_pos, tind_extra, *, temperature,
                    local_negatives, num_chunks, group_size):
    """One half of the symmetric loss: queries ``pred``, positives in ``t_pos``.

    ``t_extra`` (``None`` within a single view) is a second view of keys that supplies only
    negatives: its own-image ROIs with the query's id are removed, as the official code
    removes the same view's.
    """
    same_pos = _same_id(pind, tind_pos)  # [B, R, R], own image only
    zero = jnp.zeros(same_pos.shape, jnp.float32)
    # Own-image logit adjustments, exactly the official masks restricted to the diagonal.
    biases = [zero if local_negatives else jnp.where(same_pos, zero, -_INFINITY_PROXY)]
    keys = [t_pos]
    if t_extra is not None:
        same_extra = _same_id(pind, tind_extra)
        biases.append(jnp.where(same_extra, -_INFINITY_PROXY, zero) if local_negatives
                      else jnp.full_like(zero, -_INFINITY_PROXY))
        keys.append(t_extra)
    lse = _chunked_logsumexp(pred, jnp.stack(keys), jnp.stack(biases, axis=2),
                             temperature=temperature, num_chunks=num_chunks,
                             group_size=group_size)

    own_logits = jnp.einsum("brk,bsk->brs", pred, t_pos) / temperature
    num_positives = jnp.sum(same_pos, axis=-1).astype(jnp.float32)
    positive_logit = (jnp.sum(jnp.where(same_pos, own_logits, 0.0), axis=-1)
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
    cross_view: bool = True,
    negatives_group_size: int | None = None,
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
      cross_view: if False, the loss stays within each view (the "without two views"
        ablation): the positives of ``pred1`` are ``target1``'s own-image ROIs with the same
        id, its softmax runs over ``target1``'s ROIs only (view 2 takes no part), and the
        same for view 2; weights and averaging as above.
      negatives_group_size: if set, the batch is cut into consecutive groups of this many
        images and each query's softmax runs over the ROIs of its own group only; the loss
        is still the mean over all ``B * R`` ROIs, i.e. the mean of the groups' losses.
        With the per-device batch this is the official ``use_replicator_loss=False`` on a
        pod (each device's loss on its own images, averaged by ``pmean``). ``None``: every
        image of the batch (the official default).
      num_chunks: number of chunks each group's images are processed in (a divisor of the
        group size); by default ``auto_num_chunks(B, R, negatives_group_size=...)``, which
        keeps each chunk within 2**24 logits on one device. With the batch sharded over N
        devices pass ``auto_num_chunks(B, R, num_devices=N, ...)`` to use fewer, larger
        chunks.

    Returns:
      Scalar loss, equal in value and gradients to :func:`detcon_b_loss_reference` (which
      has no ``cross_view``).
    """
    _check_inputs("detcon_b_loss", (pred1, pred2, target1, target2),
                  (pind1, pind2, tind1, tind2))
    batch, rois, _ = pred1.shape
    group_size = _group_size("detcon_b_loss", batch, negatives_group_size)
    if num_chunks is None:
        num_chunks = auto_num_chunks(batch, rois, negatives_group_size=negatives_group_size)
    if num_chunks < 1 or group_size % num_chunks:
        raise ValueError(f"detcon_b_loss: num_chunks={num_chunks} must divide "
                         f"{'batch' if negatives_group_size is None else 'group'} size "
                         f"{group_size}")
    p1, p2, t1, t2 = (l2_normalize(x.astype(jnp.float32)) for x in (pred1, pred2, target1, target2))
    kwargs = dict(temperature=temperature, local_negatives=local_negatives,
                  num_chunks=num_chunks, group_size=group_size)
    if cross_view:
        return (_lean_direction(p1, t2, t1, pind1, tind2, tind1, **kwargs)
                + _lean_direction(p2, t1, t2, pind2, tind1, tind2, **kwargs))
    return (_lean_direction(p1, t1, None, pind1, tind1, None, **kwargs)
            + _lean_direction(p2, t2, None, pind2, tind2, None, **kwargs))


def detcon_s_loss(
    proj1: jax.Array,
    proj2: jax.Array,
    ind1: jax.Array,
    ind2: jax.Array,
    *,
    temperature: float = 0.1,
    local_negatives: bool = True,
    cross_view: bool = True,
    negatives_group_size: int | None = None,
    num_chunks: int | None = None,
) -> jax.Array:
    """DetCon-S loss: the DetCon-B objective with one shared network, SimCLR-style.

    The projections of each view serve as both queries and keys (no predictor, no target
    network) and gradients flow through both sides. With ``cross_view=False`` a ROI's
    positives are itself and its duplicates (identical vectors: a constant logit), so the
    objective only pushes different masks and images of one view apart.

    Args:
      proj1, proj2: projections ``[B, R, D]`` of view 1 and 2.
      ind1, ind2: int mask ids ``[B, R]``.
      temperature, local_negatives, cross_view, negatives_group_size, num_chunks: see
        :func:`detcon_b_loss`.
    """
    return detcon_b_loss(proj1, proj2, proj1, proj2, ind1, ind2, ind1, ind2,
                         temperature=temperature, local_negatives=local_negatives,
                         cross_view=cross_view, negatives_group_size=negatives_group_size,
                         num_chunks=num_chunks)


def _as_one_roi(x: jax.Array, name: str) -> jax.Array:
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name}: expected [B, D] or [B, 1, D], got shape {x.shape}")


def simclr_loss(proj1: jax.Array, proj2: jax.Array, *, temperature: float = 0.1,
                cross_view: bool = True, negatives_group_size: int | None = None) -> jax.Array:
    """SimCLR's NT-Xent loss (one mask per image), summed over both views' directions.

    Args:
      proj1, proj2: projections ``[B, D]`` or ``[B, 1, D]``.
      temperature: softmax temperature.
      cross_view: if False, each view is contrasted with itself only: the positive is the
        embedding itself (a constant logit), the negatives the other images of that view.
      negatives_group_size: negatives from consecutive groups of this many images only
        (see :func:`detcon_b_loss`); ``None`` = the whole batch.
    """
    p1, p2 = _as_one_roi(proj1, "simclr_loss"), _as_one_roi(proj2, "simclr_loss")
    ids = jnp.zeros(p1.shape[:2], jnp.int32)
    return detcon_s_loss(p1, p2, ids, ids, temperature=temperature, cross_view=cross_view,
                         negatives_group_size=negatives_group_size)


def byol_loss(
    pred1: jax.Array, pred2: jax.Array, target1: jax.Array, target2: jax.Array, *,
    cross_view: bool = True,
) -> jax.Array:
    """BYOL's regression loss: ``||n(p1) - n(t2)||^2 + ||n(p2) - n(t1)||^2`` (= 4 - 2cos - 2cos).

    Inputs ``[B, D]`` or ``[B, 1, D]``; averaged over the batch (official BYOL). With
    ``cross_view=False`` each prediction regresses its own view's target instead:
    ``||n(p1) - n(t1)||^2 + ||n(p2) - n(t2)||^2``.
    """
    def regression(x, y):
        diff = l2_normalize(x.astype(jnp.float32)) - l2_normalize(y.astype(jnp.float32))
        return jnp.sum(jnp.square(diff), axis=-1)

    p1, p2, t1, t2 = (_as_one_roi(x, "byol_loss") for x in (pred1, pred2, target1, target2))
    if not cross_view:
        t1, t2 = t2, t1
    return jnp.mean(regression(p1, t2) + regression(p2, t1))
