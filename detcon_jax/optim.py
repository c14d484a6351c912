"""Optimisation for DetCon pre-training: LARS from optax parts, LR and target-EMA schedules.

The numerics follow the official DetCon code (``utils/optimizers.py``, ``utils/schedules.py``
and the step arithmetic of ``detcon_b_config.py``); only jax, jnp and optax are used here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "derive_steps",
    "lars",
    "lars_exclusion_mask",
    "learning_rate_schedule",
    "target_ema_schedule",
]

Schedule = Callable[[jax.Array], jax.Array]


def _key_name(entry: Any) -> str:
    """Name of one path entry of a pytree (dict key, attribute or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _is_adapted(path: tuple[Any, ...]) -> bool:
    """True for parameters that receive weight decay and the LARS trust ratio.

    Haiku's filter in the official code tests `"norm" in module_name`, and a Haiku module name
    is the whole ``a/~/b/~/c`` path, so any enclosing module with "norm" in its name excludes
    the leaf. We mirror that by scanning every module name above the leaf; the match is
    case-insensitive so that Flax's default ``BatchNorm_0`` / ``LayerNorm_0`` names qualify.
    """
    names = [_key_name(entry) for entry in path]
    if not names:
        return True
    if names[-1] == "bias":
        return False
    return not any("norm" in name.lower() for name in names[:-1])


def lars_exclusion_mask(params: Any) -> Any:
    """Pytree of bools, True where LARS applies weight decay and trust-ratio adaptation.

    Leaves named ``bias`` and every leaf below a module whose name contains ``norm``
    (case-insensitive: ``batchnorm_0``, ``initial_batchnorm``, ``BatchNorm_0``, ...) are False.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_adapted(path), params)


def lars(
    learning_rate: float | Schedule,
    *,
    weight_decay: float = 1.5e-6,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
) -> optax.GradientTransformation:
    """LARS with weight decay, as in the official DetCon optimiser.

    Order per step: ``g + wd * p`` -> multiply by ``trust_coefficient * |p| / |g|`` -> momentum
    buffer ``mu = momentum * mu + g`` (the buffer holds un-scaled updates) -> ``-lr * mu``.
    Biases and normalisation parameters (see `lars_exclusion_mask`) skip both weight decay and
    the trust ratio but still get momentum and the learning rate.

    ``optax.scale_by_trust_ratio`` sets the ratio to 1 when either the parameter norm or the
    update norm is zero, which is exactly the official rule (``where(|p| > 0, where(|g| > 0,
    eta |p| / |g|, 1), 1)``), so no custom transform is needed.

    Args:
      learning_rate: a float, or an optax schedule evaluated at the update count (0 at the
        first update, matching the official ``global_step``).
      weight_decay: coefficient of the decoupled-into-the-gradient L2 term.
      momentum: momentum coefficient.
      trust_coefficient: LARS ``eta``.

    Returns:
      An ``optax.GradientTransformation``; ``update`` needs ``params``.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=lars_exclusion_mask),
        optax.masked(
            optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
            lars_exclusion_mask,
        ),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def _cosine_decay(step: jax.Array, decay_steps: int, initial_value: float) -> jax.Array:
    """TF1-style cosine decay from ``initial_value`` to 0 at ``decay_steps``, then held at 0."""
    step = jnp.minimum(step, decay_steps)
    # Same float32 evaluation order as the official code, so results match to the last ulp.
    return initial_value * (0.5 * (1 + jnp.cos(jnp.pi * step / decay_steps)))


def learning_rate_schedule(
    *,
    base_learning_rate: float,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
) -> Schedule:
    """Linear warm-up then cosine decay, with the learning rate scaled by ``batch_size / 256``.

    ``lr(k) = scaled * k / warmup`` for ``k < warmup``, then
    ``scaled * (1 + cos(pi * min(k - warmup, T - warmup) / (T - warmup))) / 2``, reaching
    exactly 0 at ``k = total_steps`` and staying there. ``lr(0) = 0`` when there is warm-up.

    Returns:
      A jit-able function of an integer step (scalar array or Python int).
    """
    if total_steps <= 0:
        raise ValueError(f"learning_rate_schedule: total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"learning_rate_schedule: warmup_steps must be in [0, total_steps={total_steps}), "
            f"got {warmup_steps}")
    scaled_lr = base_learning_rate * batch_size / 256.0
    warmup_steps = int(warmup_steps)
    total_steps = int(total_steps)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step)
        decayed = _cosine_decay(step - warmup_steps, total_steps - warmup_steps, scaled_lr)
        if warmup_steps == 0:
            return decayed
        warm = step.astype(jnp.float32) / warmup_steps * scaled_lr
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def target_ema_schedule(*, base_ema: float, total_steps: int) -> Schedule:
    """Target-network EMA rate ``tau(k) = 1 - (1 - base_ema) * (cos(pi k / K) + 1) / 2``.

    ``k`` is clamped to ``K = total_steps`` so ``tau`` stays at 1 afterwards.

    Returns:
      A jit-able function of an integer step (scalar array or Python int).
    """
    if total_steps <= 0:
        raise ValueError(f"target_ema_schedule: total_steps must be > 0, got {total_steps}")
    total_steps = int(total_steps)

    def schedule(step: jax.Array) -> jax.Array:
        return 1.0 - (1.0 - base_ema) * _cosine_decay(jnp.asarray(step), total_steps, 1.0)

    return schedule


def derive_steps(*, num_epochs: int, images_per_epoch: int, batch_size: int) -> tuple[int, int]:
    """``(warmup_steps, total_steps)`` from epochs, data-set size and global batch size.

    Same arithmetic as the official config: ``num_epochs // 100`` warm-up epochs (1 for the
    100-epoch run, 10 for 1000 epochs, 0 below 100) and floor divisions by the batch size.
    """
    for key, value in (("num_epochs", num_epochs), ("images_per_epoch", images_per_epoch),
                       ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"derive_steps: {key} must be a positive int, got {value!r}")
    num_epochs, images, batch = int(num_epochs), int(images_per_epoch), int(batch_size)
    warmup_epochs = num_epochs // 100
    warmup_steps = (warmup_epochs * images) // batch
    total_steps = (num_epochs * images) // batch
    if total_steps == 0:
        raise ValueError(
            f"derive_steps: batch_size={batch_size} exceeds num_epochs * images_per_epoch="
            f"{num_epochs * images_per_epoch}; no full step")
    return warmup_steps, total_steps

