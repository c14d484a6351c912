"""Dense evaluation, the library: segmentation metrics, the 1x1-conv probe on frozen feature
maps and the FCN fine-tune on the mesh. The CLI and its data plumbing are in `segmentation`
(whose docstring describes both modes and the metric).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from detcon_jax import sharding
from detcon_jax.evaluate.features import Backbone, any_host, host_rows, progress, progress_bar

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist")
IGNORE_LABEL = 255


# ---------------------------------------------------------------------------------------------
# Metrics.


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label"))
def _confusion_counts(pred: jax.Array, label: jax.Array, *, num_classes: int,
                      ignore_label: int) -> jax.Array:
    """int32 confusion counts of one (global) batch; exact (integer weights)."""
    label = label.astype(jnp.int32).ravel()
    pred = pred.astype(jnp.int32).ravel()
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    index = jnp.where(valid, label * num_classes + pred, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def confusion_matrix(pred: Any, label: Any, *, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """int64 ``[K, K]`` counts, rows = ground truth, columns = prediction.

    Pixels whose label is ``ignore_label`` (or outside ``[0, K)``) are not counted.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"confusion matrix: prediction {pred.shape} vs label {label.shape}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"confusion matrix: predictions outside [0, {num_classes})")
    # int32 counts per call: count in slices far below 2**31 pixels.
    total = np.zeros((num_classes, num_classes), np.int64)
    flat_p, flat_l = pred.ravel(), label.ravel()
    step = 1 << 23
    for start in range(0, flat_p.size, step):
        total += np.asarray(_confusion_counts(
            flat_p[start:start + step], flat_l[start:start + step], num_classes=num_classes,
            ignore_label=ignore_label)).astype(np.int64)
    return total


def iou_from_confusion(confusion: Any) -> tuple[np.ndarray, float]:
    """Per-class IoU ``[K]`` (NaN where TP + FP + FN = 0) and their mean over defined classes."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    defined = ~np.isnan(iou)
    miou = float(iou[defined].mean()) if defined.any() else float("nan")
    return iou, miou


def segmentation_metrics(confusion: Any, class_names: Sequence[str] | None = None
                         ) -> dict[str, Any]:
    """``miou`` and ``pixel_accuracy`` (percent), ``per_class_iou`` {name: percent or None}."""
    confusion = np.asarray(confusion)
    iou, miou = iou_from_confusion(confusion)
    names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
    total = confusion.sum()
    return {
        "miou": 100.0 * miou,
        "pixel_accuracy": float(100.0 * np.trace(confusion) / total) if total else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else float(100.0 * v))
                          for n, v in zip(names, iou, strict=True)},
        "num_pixels": int(total),
    }


# ---------------------------------------------------------------------------------------------
# Shared pieces.


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of ``[B, h, w, K]`` logits to ``[B, H, W, K]`` (half-pixel centres)."""
    b, _, _, k = logits.shape
    return jax.image.resize(logits, (b, int(size[0]), int(size[1]), k), "bilinear")


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                        ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Softmax cross-entropy averaged over labelled pixels (0 when none is labelled)."""
    num_classes = logits.shape[-1]
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)


def _sgd(learning_rate: jax.Array | float, total_steps: int, momentum: float,
         weight_decay: float, schedule: str = "cosine") -> optax.GradientTransformation:
    if schedule == "step":  # x0.1 at 70 % and 90 % of training (BYOL appendix D.4)
        schedule = optax.piecewise_constant_schedule(
            learning_rate, {int(0.7 * total_steps): 0.1, int(0.9 * total_steps): 0.1})
    elif schedule == "cosine":
        schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    else:
        raise ValueError(f"schedule must be cosine or step, got {schedule!r}")
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum, nesterov=True))


# ---------------------------------------------------------------------------------------------
# Linear probe on frozen feature maps.


def _probe_logits(params: Mapping[str, jax.Array], maps: jax.Array) -> jax.Array:
    return maps @ params["kernel"] + params["bias"]


@functools.partial(jax.jit, static_argnames=("num_epochs", "batch_size", "ignore_label"))
def _probe_epoch(carry, epoch, x, y, mean, std, key, learning_rate, momentum, weight_decay, *,
                 num_epochs, batch_size, ignore_label):
    """One probe epoch (its own program, so that a progress bar can follow the epochs)."""
    _, n, _, _, _ = x.shape
    steps_per_epoch = n // batch_size
    optimizer = _sgd(learning_rate, num_epochs * steps_per_epoch, momentum, weight_decay)
    label_size = y.shape[-2:]

    def loss_fn(p, xb, yb):
        logits = upsample_logits(_probe_logits(p, (xb - mean) / std), label_size)
        return pixel_cross_entropy(logits, yb[:, 0], ignore_label=ignore_label)

    def train_step(state, indices):
        p, s, view, labels = state
        loss, grads = jax.value_and_grad(loss_fn)(p, jnp.take(view, indices, axis=0),
                                                  jnp.take(labels, indices, axis=0))
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s, view, labels), loss

    p, s = carry
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    order = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    view = jax.lax.dynamic_index_in_dim(x, epoch % x.shape[0], keepdims=False)
    labels = jax.lax.dynamic_index_in_dim(y, epoch % y.shape[0], keepdims=False)[:, None]
    (p, s, _, _), losses = jax.lax.scan(train_step, (p, s, view, labels), order)
    return (p, s), jnp.mean(losses)


def _fit_probe(x, y, mean, std, key, learning_rate, momentum, weight_decay, *, num_classes,
               num_epochs, batch_size, ignore_label):
    dim = x.shape[-1]
    params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    carry, loss = (params, _sgd(learning_rate, 1, momentum, weight_decay).init(params)), None
    bar = progress_bar(num_epochs, "segmentation probe", unit="epoch")
    for epoch in range(num_epochs):
        carry, loss = _probe_epoch(carry, jnp.int32(epoch), x, y, mean, std, key,
                                   learning_rate, momentum, weight_decay, num_epochs=num_epochs,
                                   batch_size=batch_size, ignore_label=ignore_label)
        bar.update(1)
    bar.close()
    return carry[0], loss


def train_segmentation_probe(train_maps: Any, train_labels: Any, *, num_classes: int,
                             ignore_label: int = IGNORE_LABEL, learning_rate: float = 0.1,
                             num_epochs: int = 50, batch_size: int = 16,
                             momentum: float = 0.9, weight_decay: float = 0.0,
                             standardize: bool = True, seed: int = 0) -> dict[str, Any]:
    """Trains a 1x1-conv probe on frozen feature maps with pixel cross-entropy.

    Args:
      train_maps: ``[N, h, w, C]`` feature maps, or ``[A, N, h, w, C]`` for A augmented passes
        (epoch ``e`` uses pass ``e mod A``).
      train_labels: ``[N, H, W]`` (or ``[A, N, H, W]``, matching the passes) integer labels;
        ``ignore_label`` marks unlabelled pixels.
      num_classes: number of real classes K (labels ``0..K-1``).
      learning_rate, num_epochs, batch_size, momentum, weight_decay: SGD (Nesterov) with a
        cosine schedule; each epoch takes ``N // batch_size`` shuffled minibatches.
      standardize: z-score channels with training statistics (folded back into the result).
      seed: shuffling seed.

    Returns:
      ``params`` (``kernel`` [C, K], ``bias`` [K] on raw features) and ``train_loss``.
    """
    x = np.asarray(train_maps, np.float32)
    x = x[None] if x.ndim == 4 else x
    y = np.asarray(train_labels, np.int32)
    y = y[None] if y.ndim == 3 else y
    if x.ndim != 5 or y.ndim != 4 or x.shape[1] != y.shape[1] or y.shape[0] not in (
            1, x.shape[0]):
        raise ValueError(f"segmentation probe: feature maps {np.shape(train_maps)} do not "
                         f"match labels {np.shape(train_labels)}")
    if standardize:
        mean = x.mean(axis=(0, 1, 2, 3))
        std = x.std(axis=(0, 1, 2, 3)) + 1e-6
    else:
        mean, std = np.zeros(x.shape[-1], np.float32), np.ones(x.shape[-1], np.float32)
    params, loss = _fit_probe(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(mean), jnp.asarray(std),
        jax.random.key(seed), jnp.float32(learning_rate), jnp.float32(momentum),
        jnp.float32(weight_decay), num_classes=int(num_classes), num_epochs=int(num_epochs),
        batch_size=min(int(batch_size), x.shape[1]), ignore_label=int(ignore_label))
    kernel = np.asarray(params["kernel"]) / std[:, None]
    bias = np.asarray(params["bias"]) - mean @ kernel
    return {"params": {"kernel": kernel, "bias": bias}, "train_loss": float(loss)}


@functools.partial(jax.jit, static_argnames=("label_size",))
def _predict_probe_batch(params, maps, label_size):
    return jnp.argmax(upsample_logits(_probe_logits(params, maps), label_size), axis=-1)


def predict_probe(params: Mapping[str, Any], maps: Any, label_size: Sequence[int], *,
                  batch_size: int = 32) -> np.ndarray:
    """Per-pixel class ids ``[N, H, W]`` of the probe on feature maps ``[N, h, w, C]``."""
    maps = np.asarray(maps, np.float32)
    params = jax.tree.map(jnp.asarray, dict(params))
    out = []
    for start in range(0, len(maps), batch_size):
        block = maps[start:start + batch_size]
        rows = len(block)
        block = np.pad(block, ((0, batch_size - rows),) + ((0, 0),) * 3)
        out.append(np.asarray(_predict_probe_batch(params, block, tuple(label_size)))[:rows])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Fine-tuning with an FCN head.


class FCNHead(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU layers (``dilation``: their atrous rate, 6 in the
    BYOL/MoCo protocol), then a 1x1 conv to ``num_classes`` logits."""

    num_classes: int
    channels: int = 256
    num_convs: int = 2
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_convs):
            x = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False,
                        kernel_dilation=self.dilation, name=f"conv_{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name=f"batchnorm_{i}")(x)
            x = nn.relu(x)
        return nn.Conv(self.num_classes, (1, 1), name="classifier")(x)


def _replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host values (identical on every process) -> global arrays replicated on ``mesh``."""
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), rep, lambda index, x=x: np.asarray(x)[index]), tree)


def finetune(backbone: Backbone, train_batches: Iterable[Mapping[str, Any]],
             eval_batches_fn: Callable[[], Any], *, num_classes: int, num_steps: int,
             ignore_label: int = IGNORE_LABEL, learning_rate: float = 0.01,
             momentum: float = 0.9, weight_decay: float = 1e-4, head_channels: int = 256,
             seed: int = 0, mesh: jax.sharding.Mesh | None = None,
             keep_predictions: int = 0, schedule: str = "cosine",
             head_dilation: int = 1) -> dict[str, Any]:
    """Fine-tunes encoder + FCN head on the mesh; returns the evaluation confusion matrix.

    Training is data-parallel as in `detcon_jax.trainer`: parameters, BatchNorm statistics
    and optimiser state replicated over a mesh of every device of every process, each batch
    a global array sharded over ``'data'`` (each host passes its own rows), so BatchNorm
    normalises over the global batch and XLA inserts the gradient all-reduce.

    Args:
      backbone: from `load_backbone` (its variables are the starting point; not modified).
      train_batches: endless iterable of this host's ``{'image' [b, S, S, 3], 'label'
        [b, S, S]}`` (``b`` = global batch / processes).
      eval_batches_fn: callable returning this host's pass of evaluation batches (with
        ``valid``); hosts with fewer batches feed padding until every host is done.
      num_classes: number of real classes; ``ignore_label`` pixels are skipped.
      num_steps: training steps; SGD + Nesterov momentum with a ``schedule`` (``cosine``, or
        ``step``: x0.1 at 70 % and 90 %), decoupled L2 weight decay on every parameter.
      head_channels, head_dilation: width and atrous rate of the head's 3x3 convolutions.
      mesh: default `sharding.make_mesh()` (all devices).
      keep_predictions: this host's first N evaluation images, labels and predictions are
        returned (for `write_predictions_png`).

    Returns:
      ``confusion`` int64 ``[K, K]`` (summed over every host's images), ``losses`` (the
      training loss of every step) and, with ``keep_predictions``, ``gallery``
      ``(images, labels, predictions)``.
    """
    mesh = mesh or sharding.make_mesh()
    rep, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    head = FCNHead(num_classes=num_classes, channels=head_channels, dilation=head_dilation)
    iterator = iter(train_batches)
    first = next(iterator)
    features, _ = backbone.apply(backbone.variables, jnp.asarray(first["image"][:1]),
                                 train=False)
    head_vars = jax.jit(lambda f: head.init(jax.random.key(seed), f, train=False))(features)
    optimizer = _sgd(learning_rate, num_steps, momentum, weight_decay, schedule)
    params = _replicate({"backbone": backbone.variables["params"],
                         "head": head_vars["params"]}, mesh)
    stats = _replicate({"backbone": backbone.variables["batch_stats"],
                        "head": head_vars["batch_stats"]}, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=rep)(params)

    def loss_fn(p, s, image, label):
        feats, new_backbone = backbone.apply({"params": p["backbone"],
                                              "batch_stats": s["backbone"]}, image, train=True)
        logits, head_updates = head.apply({"params": p["head"], "batch_stats": s["head"]},
                                          feats, train=True, mutable=["batch_stats"])
        logits = upsample_logits(logits, label.shape[1:3])
        loss = pixel_cross_entropy(logits, label, ignore_label=ignore_label)
        return loss, {"backbone": new_backbone, "head": head_updates["batch_stats"]}

    def train_step(p, s, o, batch):
        (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            p, s, batch["image"], batch["label"])
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), s, o, loss

    train_step = jax.jit(train_step, in_shardings=(rep, rep, rep, batch_sharding),
                         out_shardings=(rep, rep, rep, rep), donate_argnums=(0, 1, 2))

    def eval_step(p, s, batch):
        feats, _ = backbone.apply({"params": p["backbone"], "batch_stats": s["backbone"]},
                                  batch["image"], train=False)
        logits = head.apply({"params": p["head"], "batch_stats": s["head"]}, feats,
                            train=False)
        # Logits upsampled to the labels' own size (native with --eval_crop=frame|pad).
        pred = jnp.argmax(upsample_logits(logits, batch["label"].shape[1:3]), axis=-1)
        label = jnp.where(batch["valid"][:, None, None], batch["label"], ignore_label)
        return pred, _confusion_counts(pred, label, num_classes=num_classes,
                                       ignore_label=ignore_label)

    eval_step = jax.jit(eval_step, in_shardings=(rep, rep, batch_sharding),
                        out_shardings=(batch_sharding, rep))

    batch, losses = first, []
    bar = progress_bar(num_steps, "fine-tune", unit="step")
    for step in range(1, num_steps + 1):
        local = {"image": np.asarray(batch["image"], np.float32),
                 "label": np.asarray(batch["label"], np.int32)}
        params, stats, opt_state, loss = train_step(params, stats, opt_state,
                                                    sharding.global_batch(local, mesh))
        losses.append(loss)
        bar.update(1)
        if step < num_steps:
            batch = next(iterator)
    bar.close()
    losses = [float(x) for x in losses]
    progress(f"fine-tune: {num_steps} steps, final loss {losses[-1]:.4f}")
    confusion = np.zeros((num_classes, num_classes), np.int64)
    gallery: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    batches, template = iter(_numpy(eval_batches_fn())), None
    while True:
        batch = next(batches, None)
        if not any_host(batch is not None):
            break
        if batch is None:  # this host is done, another is not: all-padding rows
            batch = {k: np.zeros_like(v) for k, v in template.items()}
        template = template or batch
        local = {"image": np.asarray(batch["image"], np.float32),
                 "label": np.asarray(batch["label"], np.int32),
                 "valid": np.asarray(batch.get("valid", np.ones(len(batch["label"]), bool)),
                                     bool)}
        pred, counts = eval_step(params, stats, sharding.global_batch(local, mesh))
        confusion += np.asarray(counts).astype(np.int64)
        if sum(len(g[0]) for g in gallery) < keep_predictions:
            keep = local["valid"]
            gallery.append((local["image"][keep], local["label"][keep], host_rows(pred)[keep]))
    result: dict[str, Any] = {"confusion": confusion, "losses": losses}
    if keep_predictions and gallery:
        result["gallery"] = tuple(np.concatenate(x)[:keep_predictions]
                                  for x in zip(*gallery, strict=True))
    return result


def _numpy(dataset: Any) -> Iterable[Mapping[str, Any]]:
    return dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
