"""The training state and the pure, jit-able DetCon/BYOL/SimCLR training step.

One step (official ``detcon_b.py`` ``loss_fn`` + ``_update_fn``): augment each view on
device -> binary masks on the feature grid -> sample mask ids once per view (shared by the
online and target networks) -> online and target forward in train mode (both update their
BatchNorm statistics) -> loss by method (+ the online linear probe's cross-entropy when
labels exist) -> gradients w.r.t. the online parameters -> LARS with the LR schedule ->
target EMA towards the *new* online parameters with tau at the current step.

Arrays are global (see ``sharding.py``): nothing here names a device axis, and every
reduction (BatchNorm statistics, negatives, means) covers the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from detcon_jax import augment as augment_lib
from detcon_jax import learned_masks, losses, optim
from detcon_jax import masks as masks_lib
from detcon_jax import model as model_lib
from detcon_jax.config import has_discovery_network, uses_target_network
from detcon_jax.model import DetConNetwork

__all__ = [
    "ENCODER_STRIDE",
    "Schedules",
    "StepInputs",
    "TrainState",
    "create_train_state",
    "discovery_variables",
    "init_keys",
    "make_network",
    "make_optimizer",
    "make_schedules",
    "make_loss_inputs",
    "make_train_step",
    "mask_metrics",
    "step_key",
]

ENCODER_STRIDE = 32
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole).

    ``target_*`` are ``None`` for methods without a target network (DetCon-S, SimCLR).
    ``rng`` is the run's base key; step ``k`` uses ``fold_in(rng, k)``, so a resumed run
    draws exactly the numbers an uninterrupted one would. ``discovery_*``: the learned
    masks' own EMA of the online network (``masks.learned.network='ema'``), else ``None``.
    """

    step: jax.Array
    online_params: Any
    online_batch_stats: Any
    target_params: Any
    target_batch_stats: Any
    opt_state: Any
    rng: jax.Array
    discovery_params: Any = None
    discovery_batch_stats: Any = None


@flax.struct.dataclass
class Schedules:
    """Step -> learning rate and step -> target EMA rate, plus the step counts behind them."""

    learning_rate: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
    target_ema: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
    total_steps: int = flax.struct.field(pytree_node=False)
    warmup_steps: int = flax.struct.field(pytree_node=False)


def make_schedules(config: Any, *, total_steps: int, warmup_steps: int) -> Schedules:
    """The official LR (base x batch/256, warm-up, cosine) and target-EMA schedules."""
    return Schedules(
        learning_rate=optim.learning_rate_schedule(
            base_learning_rate=config.optim.base_learning_rate,
            batch_size=config.batch_size,
            total_steps=total_steps,
            warmup_steps=warmup_steps),
        target_ema=optim.target_ema_schedule(
            base_ema=config.optim.base_ema, total_steps=total_steps),
        total_steps=int(total_steps),
        warmup_steps=int(warmup_steps),
    )


def make_network(config: Any, *, num_views: int = 1) -> DetConNetwork:
    """The DetCon network for ``config.method`` (no predictor for DetCon-S / SimCLR).

    ``num_views``: views interleaved in one training batch (``model.interleave_views``);
    the train step uses 2, everything else (init, evaluation, export) the default 1. The
    parameters do not depend on it.
    """
    m = config.model
    return DetConNetwork(
        depth=m.depth,
        width_multiplier=m.width_multiplier,
        mlp_hidden_size=m.mlp_hidden_size,
        projection_size=m.projection_size,
        use_predictor=uses_target_network(config.method),
        num_classes=m.num_classes,
        bn_momentum=m.bn_decay,
        bn_epsilon=m.bn_epsilon,
        dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32,
        encoder_blocks_per_group=None if m.blocks_per_group is None else tuple(m.blocks_per_group),
        encoder_channels_per_group=(None if m.channels_per_group is None
                                    else tuple(m.channels_per_group)),
        num_views=num_views,
    )


def make_optimizer(config: Any, schedules: Schedules) -> optax.GradientTransformation:
    """LARS driven by the LR schedule (its update count equals ``TrainState.step``)."""
    o = config.optim
    return optim.lars(
        schedules.learning_rate,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        trust_coefficient=o.trust_coefficient,
    )


def _num_rois(config: Any) -> int:
    return config.masks.num_samples if config.masks.source != "none" else 1


def _feature_size(image_size: int) -> int:
    return -(-image_size // ENCODER_STRIDE)


def init_keys(rng: jax.Array) -> jax.Array:
    """The keys ``create_train_state`` derives from the run's key: online init, target init
    and the training key (``TrainState.rng``), stacked."""
    return jax.random.split(rng, 3)


def create_train_state(config: Any, rng: jax.Array, *,
                       optimizer: optax.GradientTransformation) -> TrainState:
    """Initial state: online and target networks from *different* keys, as the official code.

    Args:
      config: a validated experiment config.
      rng: the run's key (``jax.random.PRNGKey(config.seed)``).
      optimizer: from `make_optimizer` (only the structure of its state matters here).
    """
    network = make_network(config)
    size = config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    masks = jnp.ones((1, _num_rois(config), _feature_size(size) ** 2), jnp.float32)
    rng_online, rng_target, rng_train = init_keys(rng)
    online = network.init(rng_online, images, masks, train=True)
    target_params = target_stats = None
    if uses_target_network(config.method):
        target = network.init(rng_target, images, masks, train=True)
        target_params, target_stats = target["params"], target["batch_stats"]
    discovery = {}
    if has_discovery_network(config):
        # The discovery EMA starts as the online network (Odin's momentum encoder).
        discovery = dict(discovery_params=online["params"],
                         discovery_batch_stats=online["batch_stats"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        online_params=online["params"],
        online_batch_stats=online["batch_stats"],
        target_params=target_params,
        target_batch_stats=target_stats,
        opt_state=optimizer.init(online["params"]),
        rng=rng_train,
        **discovery,
    )


def discovery_variables(config: Any, state: TrainState) -> dict[str, Any]:
    """The variables of the learned masks' discovery network (``masks.learned.network``)."""
    network = config.masks.learned.network
    if network == "target":
        return {"params": state.target_params, "batch_stats": state.target_batch_stats}
    if network == "ema":
        return {"params": state.discovery_params, "batch_stats": state.discovery_batch_stats}
    return {"params": state.online_params, "batch_stats": state.online_batch_stats}


def _update_discovery(config: Any, state: TrainState, online_params: Any,
                      online_stats: Any) -> dict[str, Any]:
    """The discovery EMA's step towards the updated online network (empty without one)."""
    if not has_discovery_network(config):
        return {}
    rate = config.masks.learned.ema_rate

    def ema(d, o):
        # Integer leaves (the BatchNorm update counters) follow the online network.
        if not jnp.issubdtype(d.dtype, jnp.floating):
            return o
        return d + (1.0 - rate) * (o - d)

    return dict(discovery_params=jax.tree.map(ema, state.discovery_params, online_params),
                discovery_batch_stats=jax.tree.map(ema, state.discovery_batch_stats,
                                                   online_stats))


def featurewise_std(x: jax.Array) -> jax.Array:
    """Mean over features of the standard deviation across the batch (official monitor)."""
    return jnp.mean(jnp.std(x, axis=0))


def _sample_view_masks(config: Any, rng: jax.Array, segmentation: jax.Array,
                       image_size: int, ids: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Segmentation ``[B, S, S, 1]`` -> sampled masks ``[B, R, P]``, their ids ``[B, R]`` and
    the one-hot masks of every id on the grid ``[B, M, P]``.

    ``ids``: mask ids chosen by the caller (``[B, R]``, R = ``masks.num_samples``); drawn
    with ``rng`` when None. For the one-mask methods (BYOL, SimCLR) the single mask is the
    whole image (id 0 on every cell).
    """
    batch = segmentation.shape[0]
    cells = _feature_size(image_size) ** 2
    if config.masks.source == "none":
        whole = jnp.ones((batch, 1, cells), jnp.float32)
        return whole, jnp.zeros((batch, 1), jnp.int32), whole
    if segmentation.ndim == 4 and segmentation.shape[-1] != 1:
        raise ValueError(
            f"batch masks must be [B, S, S, 1] (one segmentation per view), got "
            f"{segmentation.shape}")
    binary = masks_lib.binary_masks(
        segmentation, downsample=image_size // _feature_size(image_size),
        max_mask_id=config.masks.max_mask_id)
    if ids is None:
        ids = masks_lib.sample_mask_ids(rng, binary, num_samples=config.masks.num_samples)
    elif ids.shape != (batch, config.masks.num_samples):
        raise ValueError(
            f"batch mask ids must be [B={batch}, masks.num_samples="
            f"{config.masks.num_samples}], got {ids.shape}")
    ids = ids.astype(jnp.int32)
    return masks_lib.gather_masks(binary, ids), ids, binary


@flax.struct.dataclass
class StepInputs:
    """What the networks and the loss see at one step (global arrays).

    ``views``: the two augmented views ``[B, S, S, 3]`` (after the on-device photometrics);
    ``masks``: each view's sampled masks ``[B, R, P]`` on the feature grid (``P = h * w``);
    ``ids``: their ids ``[B, R]``; ``grids``: each view's one-hot masks of every id
    ``[B, M, P]`` (what the ids were drawn from).
    """

    views: tuple[jax.Array, jax.Array]
    masks: tuple[jax.Array, jax.Array]
    ids: tuple[jax.Array, jax.Array]
    grids: tuple[jax.Array, jax.Array]


def step_key(state: TrainState) -> jax.Array:
    """The key of the step ``state`` is at (see `TrainState`)."""
    return jax.random.fold_in(state.rng, state.step)


def _step_inputs(config: Any, rng: jax.Array, batch: Batch) -> StepInputs:
    """Augments both views and samples their mask ids with the step key ``rng``."""
    image_size = batch["view1"].shape[1]
    aug_rng, mask_rng1, mask_rng2 = jax.random.split(rng, 3)
    views = augment_lib.augment_views(
        aug_rng, batch["view1"].astype(jnp.float32), batch["view2"].astype(jnp.float32),
        view1_config=_plain(config.augment.view1), view2_config=_plain(config.augment.view2))
    # One draw per view, used by both networks (official: same rng for both forwards).
    masks1, ids1, grid1 = _sample_view_masks(config, mask_rng1, batch["mask1"], image_size,
                                             batch.get("mask_ids1"))
    masks2, ids2, grid2 = _sample_view_masks(config, mask_rng2, batch["mask2"], image_size,
                                             batch.get("mask_ids2"))
    return StepInputs(views=views, masks=(masks1, masks2), ids=(ids1, ids2),
                      grids=(grid1, grid2))


def _plain(view_config: Any) -> dict[str, Any] | None:
    return None if view_config is None else dict(view_config)


def mask_metrics(config: Any, inputs: StepInputs) -> Metrics:
    """Per-step mask statistics (empty for the one-mask methods).

    ``positive_fraction``: the fraction of sampled regions whose id was also drawn in the
    other view (`masks.positive_fraction`; the others have weight 0 in the loss);
    ``mask_ids_view1``, ``mask_ids_view2``: distinct ids per image on the feature grid,
    averaged over the batch.
    """
    if config.masks.source == "none":
        return {}
    counts = [masks_lib.num_present_ids(g).astype(jnp.float32) for g in inputs.grids]
    return {"positive_fraction": masks_lib.positive_fraction(*inputs.ids),
            "mask_ids_view1": counts[0].mean(), "mask_ids_view2": counts[1].mean()}


def _with_learned_masks(config: Any, discovery_network: Any, state: TrainState | None,
                        rng: jax.Array, batch: Batch) -> Batch:
    """``batch`` with the learned masks of ``state``'s discovery network (other sources:
    ``batch`` as it is)."""
    if discovery_network is None:
        return batch
    if state is None:
        raise ValueError("masks.source='learned' needs the training state to draw its masks")
    return learned_masks.with_learned_masks(
        config, discovery_network, discovery_variables(config, state), rng, state.step, batch)


def make_loss_inputs(config: Any, *, num_images: int
                     ) -> Callable[..., dict[str, jax.Array]]:
    """Builds the pure ``loss_inputs(key, batch, state=None) -> arrays`` for pictures of one
    step (``state``: required for ``masks.source='learned'``, whose masks it computes).

    With ``key = step_key(state)`` and the step's batch it returns exactly what
    ``make_train_step``'s step sees (the same augmentation and mask draws), for the first
    ``num_images`` images: ``view1``, ``view2`` float ``[N, S, S, 3]`` in [0, 1] (augmented),
    ``mask1``, ``mask2`` int32 ``[N, S, S]`` (the input segmentations), ``cells1``,
    ``cells2`` int32 ``[N, h, w]`` (the id of each feature-grid cell the loss pools over)
    and ``ids1``, ``ids2`` int32 ``[N, R]`` (the sampled ids). Jit it (the whole batch is
    augmented: each image's draws depend on its row).
    """

    discovery_network = make_network(config) if config.masks.source == "learned" else None

    def loss_inputs(key: jax.Array, batch: Batch,
                    state: TrainState | None = None) -> dict[str, jax.Array]:
        batch = _with_learned_masks(config, discovery_network, state, key, batch)
        inputs = _step_inputs(config, key, batch)
        side = _feature_size(batch["view1"].shape[1])
        out = {}
        for v in (1, 2):
            out[f"view{v}"] = inputs.views[v - 1]
            out[f"mask{v}"] = batch[f"mask{v}"].astype(jnp.int32)[..., 0]
            grid = masks_lib.cell_ids(inputs.grids[v - 1])
            out[f"cells{v}"] = grid.reshape(grid.shape[0], side, side)
            out[f"ids{v}"] = inputs.ids[v - 1]
        return {k: x[:num_images] for k, x in out.items()}

    return loss_inputs


def _representation_loss(config: Any, online: tuple[Metrics, Metrics],
                         target: tuple[Metrics, Metrics] | None,
                         ids: tuple[jax.Array, jax.Array], *, num_devices: int) -> jax.Array:
    c = config.loss
    (o1, o2), (ids1, ids2) = online, ids
    # The ablation switches (validated in config.py): negatives from the whole global batch
    # or from blocks of it, same-image negatives, cross-view or within-view contrast.
    group = c.negatives_group_size if c.negatives == "group" else None
    contrast = dict(temperature=c.temperature, cross_view=c.cross_view,
                    negatives_group_size=group)
    # Shapes are global here: the chunking of the lean loss sees the whole batch and is told
    # how many devices share it, instead of naming a mesh axis.
    batch, rois = o1["projection"].shape[:2]
    num_chunks = losses.auto_num_chunks(batch, rois, num_devices=num_devices,
                                        negatives_group_size=group)
    if config.method == "detcon_b":
        return losses.detcon_b_loss(
            o1["prediction"], o2["prediction"],
            jax.lax.stop_gradient(target[0]["projection"]),
            jax.lax.stop_gradient(target[1]["projection"]),
            ids1, ids2, ids1, ids2, local_negatives=c.same_image_negatives,
            num_chunks=num_chunks, **contrast)
    if config.method == "byol":
        return losses.byol_loss(
            o1["prediction"], o2["prediction"],
            jax.lax.stop_gradient(target[0]["projection"]),
            jax.lax.stop_gradient(target[1]["projection"]), cross_view=c.cross_view)
    if config.method == "detcon_s":
        return losses.detcon_s_loss(
            o1["projection"], o2["projection"], ids1, ids2,
            local_negatives=c.same_image_negatives, num_chunks=num_chunks, **contrast)
    if config.method == "simclr":
        return losses.simclr_loss(o1["projection"], o2["projection"], **contrast)
    raise ValueError(f"config key 'method': unknown method {config.method!r}")


def _classifier_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax cross-entropy and top-1 over the examples with a label (``label >= 0``)."""
    valid = (labels >= 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    safe = jnp.maximum(labels, 0)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    top1 = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
    return jnp.sum(xent * valid) / count, jnp.sum(top1 * valid) / count


def make_train_step(config: Any, schedules: Schedules,
                    optimizer: optax.GradientTransformation, *, num_devices: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the pure ``train_step(state, batch) -> (state, metrics)``.

    ``num_devices``: how many devices the batch dimension is sharded over (the mesh's
    ``data`` axis); it only sizes the memory-lean loss's chunks (``losses.auto_num_chunks``),
    never the result.

    ``batch``: ``view1``, ``view2`` float ``[B, S, S, 3]`` in [0, 1]; ``mask1``, ``mask2``
    integer ``[B, S, S, 1]`` segmentations (the input pipeline already picked the FH setting,
    GT or grid); ``label`` int ``[B]`` (-1 = unknown). Optional ``mask_ids1``,
    ``mask_ids2`` int ``[B, masks.num_samples]``: the mask ids of each view, used by both
    networks instead of the step's random draw (ids in ``[0, masks.max_mask_id)``; an id
    absent from its view's grid pools an empty mask, i.e. a zero vector). For
    ``masks.source='learned'`` also ``cover``, ``cover_box1/2``, ``cover_flip1/2`` (see
    ``data.geometry.two_views``): the masks are then discovered on device
    (``learned_masks``), ``mask1/2`` are the bootstrap masks. Metrics are scalars over the
    global batch.
    """
    # Both views go through the network in one call (per-view BatchNorm statistics, moving
    # averages updated view 1 then view 2, as the official two calls): one traced network
    # instead of two, and every convolution runs on the whole two-view batch.
    network = make_network(config, num_views=2)
    with_target = uses_target_network(config.method)
    num_classes = config.model.num_classes
    # Learned masks: the discovery network sees one covering window per example.
    discovery_network = make_network(config) if config.masks.source == "learned" else None

    def forward(params, stats, views, masks):
        outputs, updated = network.apply(
            {"params": params, "batch_stats": stats}, model_lib.interleave_views(*views),
            model_lib.interleave_views(*masks), train=True, mutable=["batch_stats"])
        return model_lib.split_views(outputs, 2), updated["batch_stats"]

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = step_key(state)
        batch = _with_learned_masks(config, discovery_network, state, rng, batch)
        inputs = _step_inputs(config, rng, batch)
        (view1, view2), (masks1, masks2), (ids1, ids2) = inputs.views, inputs.masks, inputs.ids

        target_outputs = None
        target_stats = state.target_batch_stats
        if with_target:
            # The target runs in train mode and its BatchNorm statistics move too.
            target_outputs, target_stats = forward(
                state.target_params, target_stats, (view1, view2), (masks1, masks2))

        def loss_fn(params):
            (o1, o2), stats = forward(params, state.online_batch_stats, (view1, view2),
                                      (masks1, masks2))
            repr_loss = _representation_loss(config, (o1, o2), target_outputs, (ids1, ids2),
                                             num_devices=num_devices)
            aux = {"stats": stats, "view1": o1}
            loss = repr_loss
            if num_classes > 0:
                classif_loss, top1 = _classifier_loss(o1["logits"], batch["label"])
                loss = loss + classif_loss
                aux.update(classif_loss=classif_loss, top1_accuracy=top1)
            aux["repr_loss"] = repr_loss
            return loss, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.online_params)
        lr = schedules.learning_rate(state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.online_params)
        online_params = optax.apply_updates(state.online_params, updates)

        metrics: Metrics = {"loss": loss, "repr_loss": aux["repr_loss"], "lr": lr}
        target_params = state.target_params
        if with_target:
            tau = schedules.target_ema(state.step)
            # EMA towards the updated online parameters, as the official _update_fn.
            target_params = jax.tree.map(
                lambda t, o: t + (1.0 - tau) * (o - t), state.target_params, online_params)
            metrics["tau"] = tau
        if num_classes > 0:
            metrics["classif_loss"] = aux["classif_loss"]
            metrics["top1_accuracy"] = aux["top1_accuracy"]
        projection = aux["view1"]["projection"]
        metrics.update(
            proj_mean=projection.mean(),
            proj_std=featurewise_std(projection),
            normalized_proj_std=featurewise_std(losses.l2_normalize(projection, axis=-1)))
        if "prediction" in aux["view1"]:
            prediction = aux["view1"]["prediction"]
            metrics.update(
                pred_mean=prediction.mean(),
                pred_std=featurewise_std(prediction),
                normalized_pred_std=featurewise_std(losses.l2_normalize(prediction, axis=-1)))
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics.update(mask_metrics(config, inputs))

        new_state = state.replace(
            step=state.step + 1,
            online_params=online_params,
            online_batch_stats=aux["stats"],
            target_params=target_params,
            target_batch_stats=target_stats,
            opt_state=opt_state,
            **_update_discovery(config, state, online_params, aux["stats"]),
        )
        return new_state, metrics

    return train_step
