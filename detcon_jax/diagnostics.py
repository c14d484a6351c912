"""Warnings about runs that train on nothing: a 1x1 feature grid, a loss or gradient of 0.

DetCon's loss gives a sampled region weight 0 when the other view did not draw its mask id
(as the official loss). Where the views rarely share an id (a 1x1 feature grid at 32 px:
one id per view) the loss and the gradients are exactly 0 and nothing learns, without any
error. These checks name the likely cause in one line; the trainer logs them (the start-up
one before the first step, the zero-signal one once per run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ENCODER_STRIDE", "ZeroSignalWatch", "feature_grid_warning", "zero_signal_warning"]

# The ResNet's total stride (step.ENCODER_STRIDE; not imported: this module imports no JAX).
ENCODER_STRIDE = 32


def _grid_side(config: Any) -> int:
    return -(-config.data.image_size // ENCODER_STRIDE)


def feature_grid_warning(config: Any) -> str | None:
    """One line when a multi-mask method runs on a 1x1 feature grid (``image_size <= 32``)."""
    if config.masks.source == "none" or config.data.image_size / ENCODER_STRIDE > 1:
        return None
    return (f"data.image_size={config.data.image_size} gives a 1x1 feature grid (encoder "
            f"stride {ENCODER_STRIDE}): each view keeps one mask id there, the two views "
            f"rarely share it, and masks.source={config.masks.source!r} regions without a "
            "positive have weight 0, so the loss is often exactly 0; use data.image_size >= "
            "64 for a DetCon run")


def zero_signal_warning(config: Any, step: int, metrics: Mapping[str, float]) -> str | None:
    """One line naming the likely cause when a step's loss or gradient norm is exactly 0.

    ``metrics``: the step's scalars (``loss``, ``repr_loss``, ``grad_norm`` and, for the
    multi-mask methods, ``positive_fraction`` and ``mask_ids_view1/2``).
    """
    zero = [k for k in ("loss", "repr_loss", "grad_norm") if k in metrics and metrics[k] == 0]
    if not zero:
        return None
    what = f"step {step}: {', '.join(zero)} {'is' if len(zero) == 1 else 'are'} exactly 0"
    fraction = metrics.get("positive_fraction")
    if fraction is not None and fraction == 0:
        side = _grid_side(config)
        ids = [metrics.get(f"mask_ids_view{v}", 0.0) for v in (1, 2)]
        cause = (f"no sampled region has its mask id in the other view (positive_fraction 0; "
                 f"{ids[0]:.1f} and {ids[1]:.1f} ids per view on the {side}x{side} feature "
                 f"grid of data.image_size={config.data.image_size}), and such regions have "
                 "weight 0")
        fix = ("use a larger data.image_size (more feature cells) or masks whose ids both "
               "views keep")
        return f"{what}: likely cause: {cause}; {fix}"
    if "grad_norm" in zero and metrics.get("repr_loss", 0) != 0:
        return (f"{what} with loss {metrics['repr_loss']:.4g}: likely cause: the loss does not "
                "reach the online parameters (check method, model and optim settings)")
    return (f"{what}: likely cause: every region's loss term vanished (check masks and loss "
            "settings; positive_fraction "
            f"{'n/a' if fraction is None else f'{fraction:.2f}'})")


class ZeroSignalWatch:
    """Logs `zero_signal_warning` for the first step that has one, once per run."""

    def __init__(self, config: Any, warn: Any) -> None:
        """``warn``: called with the line (e.g. ``absl.logging.warning``)."""
        self._config, self._warn, self._done = config, warn, False

    def check(self, steps: list[tuple[int, Mapping[str, Any]]]) -> None:
        """``steps``: (step, host scalars) pairs, in order."""
        if self._done:
            return
        for step, metrics in steps:
            line = zero_signal_warning(self._config, step,
                                       {k: float(v) for k, v in metrics.items()})
            if line is not None:
                self._warn(line)
                self._done = True
                return
