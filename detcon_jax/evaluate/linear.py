"""Linear probe on frozen, globally pooled features (BYOL linear-evaluation protocol).

Protocol (BYOL, Grill et al. 2020, appendix C.1): a linear classifier (weights + bias) on the
frozen encoder's pooled features, softmax cross-entropy, SGD with Nesterov momentum 0.9, a
cosine-decayed learning rate, no weight decay, random-crop + flip views for training and
centre crops for evaluation. The learning rate is chosen by a small sweep: train on 90 % of
the training images, score top-1 on the held-out 10 % (centre crops), then retrain on the
whole training set with the best rate and report top-1 on the test split.

Augmentation: the encoder is frozen, so the features of ``--augment_passes`` random-crop +
flip passes over the training set are computed once and epoch ``e`` trains on pass
``e mod passes`` (with ``passes == epochs`` this is exactly one fresh view per image per
epoch). ``--augment_passes=0`` is the cheaper, documented option: train on the centre-crop
features only.

Deviation (documented): by default features are standardised with the training set's
per-dimension mean and standard deviation before the classifier (and the weights folded
back, so the returned classifier acts on raw features). The function class is unchanged;
it only makes one learning-rate grid suit encoders whose feature scales differ by orders of
magnitude (a random init vs a trained network). ``--no_standardize`` gives the plain protocol.

CLI::

    python -m detcon_jax.evaluate.linear --checkpoint=WORKDIR|FILE.npy|random:50 \
        --data=DIR_OR_TFDS_NAME [--image_size=224 --epochs=100 --augment_passes=10 \
        --learning_rates=0.01,0.03,0.1,0.3,1 --output=r.json]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from detcon_jax.evaluate import common
from detcon_jax.evaluate.features import progress, progress_bar

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "linear_probe_protocol",
    "main",
    "predict",
    "top1_accuracy",
    "train_linear_probe",
]

DEFAULT_LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)


def predict(params: dict[str, Any], x: Any, *, chunk: int = 65536) -> np.ndarray:
    """Class ids of a linear classifier ``{'kernel' [C, K], 'bias' [K]}`` on features ``x``."""
    x = np.asarray(x, np.float32)
    out = [np.asarray(jnp.argmax(x[i:i + chunk] @ params["kernel"] + params["bias"], axis=-1))
           for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros([0], np.int32)


def top1_accuracy(params: dict[str, Any], x: Any, y: Any) -> float:
    """Top-1 accuracy in percent."""
    return float(100.0 * np.mean(predict(params, x) == np.asarray(y)))


def _optimizer(learning_rate, momentum, weight_decay, total_steps, nesterov):
    schedule = optax.cosine_decay_schedule(learning_rate, total_steps)
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


@functools.partial(jax.jit, static_argnames=("num_epochs", "batch_size", "nesterov"))
def _epoch(carry, epoch, x, y, mean, std, key, learning_rate, momentum, weight_decay, *,
           num_epochs: int, batch_size: int, nesterov: bool):
    """One epoch of shuffled minibatches on pass ``epoch mod passes``; returns (carry, loss).

    One program per epoch (not one for the whole run) so that a progress bar can follow the
    epochs; the carry (parameters, optimiser state) is the same as in a single loop.
    """
    passes, n, _ = x.shape
    steps_per_epoch = n // batch_size
    optimizer = _optimizer(learning_rate, momentum, weight_decay,
                           num_epochs * steps_per_epoch, nesterov)

    def loss_fn(p, xb, yb):
        logits = ((xb - mean) / std) @ p["kernel"] + p["bias"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    def train_step(state, indices):
        p, s, view = state
        xb = jnp.take(view, indices, axis=0)
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, jnp.take(y, indices))
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s, view), loss

    p, s = carry
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    order = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    view = jax.lax.dynamic_index_in_dim(x, epoch % passes, keepdims=False)
    (p, s, _), losses = jax.lax.scan(train_step, (p, s, view), order)
    return (p, s), jnp.mean(losses)


def _fit(x, y, mean, std, key, learning_rate, momentum, weight_decay, *, num_classes: int,
         num_epochs: int, batch_size: int, nesterov: bool, bar: Any = None):
    """Full training run: epochs x minibatches of shuffled examples (``bar``: tqdm, epochs)."""
    dim = x.shape[-1]
    params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    optimizer = _optimizer(learning_rate, momentum, weight_decay, 1, nesterov)
    carry, loss = (params, optimizer.init(params)), jnp.zeros(())
    for epoch in range(num_epochs):
        carry, loss = _epoch(carry, jnp.int32(epoch), x, y, mean, std, key, learning_rate,
                             momentum, weight_decay, num_epochs=num_epochs,
                             batch_size=batch_size, nesterov=nesterov)
        if bar is not None:
            bar.update(1)
    return carry[0], loss


def train_linear_probe(train_x: Any, train_y: Any, val_x: Any = None, val_y: Any = None, *,
                       num_classes: int | None = None, learning_rate: float = 0.1,
                       num_epochs: int = 100, batch_size: int = 1024, momentum: float = 0.9,
                       nesterov: bool = True, weight_decay: float = 0.0,
                       standardize: bool = True, seed: int = 0,
                       bar: Any = None) -> dict[str, Any]:
    """Trains a linear classifier on frozen features; scores it on ``(val_x, val_y)``.

    Args:
      train_x: ``[N, C]`` features, or ``[A, N, C]`` for A augmented passes over the same N
        images (epoch ``e`` uses pass ``e mod A``).
      train_y: ``[N]`` integer labels in ``[0, num_classes)``.
      val_x, val_y: evaluation features ``[M, C]`` and labels (optional).
      num_classes: default ``max(train_y) + 1``.
      learning_rate: peak LR of the cosine schedule (decays to 0 at the last step).
      num_epochs, batch_size: epochs over N; each epoch takes ``N // batch_size`` shuffled
        minibatches (the batch is clipped to N).
      momentum, nesterov, weight_decay: SGD settings (BYOL: 0.9, Nesterov, no decay).
      standardize: z-score features with the training statistics (see module docstring).
      seed: shuffling seed.
      bar: a progress bar (tqdm) advanced by one per epoch.

    Returns:
      ``params`` (``kernel`` [C, K], ``bias`` [K], acting on raw features), ``train_loss``
      (mean loss of the last epoch) and ``val_top1`` (percent; None without validation data).
    """
    x = np.asarray(train_x, np.float32)
    if x.ndim == 2:
        x = x[None]
    y = np.asarray(train_y, np.int32)
    if x.ndim != 3 or x.shape[1] != len(y) or len(y) == 0:
        raise ValueError(f"linear probe: features {np.shape(train_x)} do not match "
                         f"{len(y)} labels")
    if y.min() < 0:
        raise ValueError("linear probe: labels must be non-negative")
    num_classes = int(num_classes or y.max() + 1)
    if y.max() >= num_classes:
        raise ValueError(f"linear probe: label {y.max()} >= num_classes {num_classes}")
    if standardize:
        mean = x.mean(axis=(0, 1))
        std = x.std(axis=(0, 1)) + 1e-6
    else:
        mean, std = np.zeros(x.shape[-1], np.float32), np.ones(x.shape[-1], np.float32)
    params, loss = _fit(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(mean), jnp.asarray(std),
        jax.random.key(seed), jnp.float32(learning_rate), jnp.float32(momentum),
        jnp.float32(weight_decay), num_classes=num_classes, num_epochs=int(num_epochs),
        batch_size=min(int(batch_size), len(y)), nesterov=bool(nesterov), bar=bar)
    # Fold the standardisation into the classifier: W' = W / std, b' = b - (mean / std) W.
    kernel = np.asarray(params["kernel"]) / std[:, None]
    bias = np.asarray(params["bias"]) - mean @ kernel
    result = {"params": {"kernel": kernel, "bias": bias}, "train_loss": float(loss),
              "val_top1": None}
    if val_x is not None:
        result["val_top1"] = top1_accuracy(result["params"], val_x, val_y)
    return result


def linear_probe_protocol(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                          heldout_x: Any = None,
                          learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
                          heldout_fraction: float = 0.1, seed: int = 0,
                          **kwargs: Any) -> dict[str, Any]:
    """LR sweep on a held-out part of train, retrain on all of train, top-1 on test.

    Args:
      train_x: ``[N, C]`` or ``[A, N, C]`` training features (see `train_linear_probe`).
      train_y: ``[N]`` labels.
      test_x, test_y: test features (centre crops) and labels.
      heldout_x: ``[N, C]`` features used to score the held-out images during the sweep
        (centre crops of the training images); default ``train_x`` (first pass).
      learning_rates: the sweep; a single value skips it.
      heldout_fraction: share of training images held out for the sweep (a seeded random
        subset, at least one image).
      seed: seed of the split and of the shuffling.
      **kwargs: passed on to `train_linear_probe`.

    Returns:
      ``top1`` (test, percent), ``learning_rate`` (chosen), ``sweep`` ({lr: held-out top-1}),
      ``lr_at_edge`` (the chosen rate is the smallest or largest of a sweep: the optimum may
      lie outside the grid; a warning is printed), ``params``, ``train_loss``.
    """
    x = np.asarray(train_x, np.float32)
    y = np.asarray(train_y, np.int32)
    x3 = x if x.ndim == 3 else x[None]
    heldout = x3[0] if heldout_x is None else np.asarray(heldout_x, np.float32)
    kwargs.setdefault("num_classes", int(max(y.max(), np.max(test_y)) + 1))
    sweep: dict[str, float] = {}
    best = float(learning_rates[0])
    epochs = int(kwargs.get("num_epochs", 100))
    runs = len(learning_rates) + 1 if len(learning_rates) > 1 else 1
    bar = progress_bar(runs * epochs, f"linear probe ({runs} run(s) x {epochs} epochs)",
                       unit="epoch")
    kwargs["bar"] = bar
    if len(learning_rates) > 1:
        n = len(y)
        num_val = max(1, int(round(heldout_fraction * n)))
        if num_val >= n:
            raise ValueError(f"linear probe: cannot hold out {num_val} of {n} training images")
        order = np.random.default_rng(seed).permutation(n)
        val, fit = order[:num_val], order[num_val:]
        for lr in learning_rates:
            result = train_linear_probe(x3[:, fit], y[fit], heldout[val], y[val],
                                        learning_rate=float(lr), seed=seed, **kwargs)
            sweep[str(float(lr))] = result["val_top1"]
            bar.write(f'[evaluate] linear probe sweep: lr {lr:g} -> held-out top-1 '
                      f'{result["val_top1"]:.2f}% (loss {result["train_loss"]:.3f})',
                      file=sys.stderr)
        # Ties go to the earlier rate in the sweep.
        best = float(learning_rates[int(np.argmax([sweep[str(float(lr))]
                                                   for lr in learning_rates]))])
    at_edge = len(learning_rates) > 1 and best in (min(learning_rates), max(learning_rates))
    final = train_linear_probe(x3, y, test_x, test_y, learning_rate=best, seed=seed, **kwargs)
    bar.close()
    if at_edge:
        progress(f"warning: the best learning rate {best:g} is at the edge of the sweep "
                 f"[{min(learning_rates):g}, {max(learning_rates):g}]; the optimum may lie "
                 f"outside it: extend --learning_rates")
    progress(f'linear probe: lr {best:g} on all {len(y)} training images -> test top-1 '
             f'{final["val_top1"]:.2f}%')
    return {"top1": final["val_top1"], "learning_rate": best, "sweep": sweep,
            "lr_at_edge": at_edge, "params": final["params"],
            "train_loss": final["train_loss"]}


# ---------------------------------------------------------------------------------------------
# CLI.


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive learning rates, got {text!r}")
    return values


COST = """\
Cost of the defaults: one centre-crop pass over train and test plus --augment_passes=10
random-crop passes over train, i.e. 11 x N_train + N_test forwards at 224 px (CIFAR-10:
560,000; ImageNet: 14.1M), then 6 probe trainings (5-rate sweep + final) of 100 epochs on
the cached features. Measured on the loaded 2-core development machine: a ResNet-50 runs
at 3.8 img/s at 224 px and 14.5 img/s at 96 px, so CIFAR-10 with the defaults takes ~40 h.
For a quick number use a subset and smaller images, e.g. --train_per_class=100
--test_per_class=100 --image_size=96 --augment_passes=0 (2,000 forwards, ~3 min).
Features are cached (--feature_cache): a second evaluator on the same checkpoint and data
(e.g. evaluate.knn) does not extract them again."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detcon_jax.evaluate.linear", formatter_class=common.Formatter,
        description="Linear-probe top-1 of a frozen backbone (BYOL protocol).", epilog=COST)
    common.add_backbone_args(parser)
    common.add_classification_data_args(parser)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--probe_batch_size", type=int, default=1024)
    parser.add_argument("--learning_rates", type=_floats, default=DEFAULT_LEARNING_RATES,
                        help="comma-separated sweep (one value skips the sweep)")
    parser.add_argument("--heldout_fraction", type=float, default=0.1)
    parser.add_argument("--augment_passes", type=int, default=10,
                        help="random-crop+flip feature passes over train (cycled over epochs); "
                             "0 trains on centre-crop features (cheaper)")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--no_standardize", action="store_true",
                        help="do not z-score features (strict BYOL protocol)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the linear probe described by parsed CLI ``args``; returns the results."""
    if args.augment_passes < 0 or args.epochs < 1:
        raise common.UsageError("--augment_passes must be >= 0 and --epochs >= 1")
    backbone, info = common.backbone_from_args(args)
    data = common.ClassificationData.from_args(args, common.feature_cache_from_args(args, info))
    center_x, train_y = data.features(backbone, split=args.train_split)
    test_x, test_y = data.features(backbone, split=args.test_split)
    train_x = center_x
    if args.augment_passes:
        train_x = data.augmented_features(backbone, split=args.train_split,
                                          passes=args.augment_passes, seed=args.seed)
    result = linear_probe_protocol(
        train_x, train_y, test_x, test_y, heldout_x=center_x,
        learning_rates=args.learning_rates, heldout_fraction=args.heldout_fraction,
        seed=args.seed, num_classes=data.num_classes, num_epochs=args.epochs,
        batch_size=args.probe_batch_size, weight_decay=args.weight_decay,
        standardize=not args.no_standardize)
    return {"task": "linear", "top1": result["top1"], "learning_rate": result["learning_rate"],
            "sweep": result["sweep"], "lr_at_edge": result["lr_at_edge"],
            "train_loss": result["train_loss"],
            "epochs": args.epochs, "augment_passes": args.augment_passes,
            "standardize": not args.no_standardize, "num_train": len(train_y),
            "num_test": len(test_y), "train_split": args.train_split,
            "test_split": args.test_split, "data": args.data, "image_size": args.image_size,
            "backbone": common.describe(info)}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments or paths)."""
    return common.run_cli(_parser(), run, argv,
                          lambda r: f'linear probe top-1: {r["top1"]:.2f}% '
                                    f'(lr {r["learning_rate"]:g}, {r["num_test"]} test images)')


if __name__ == "__main__":
    sys.exit(main())
