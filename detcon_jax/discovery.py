"""The learned masks' discovery network outside the train step: restored from a training
run's checkpoint, clustering images exactly as the step does.

Used by the picture tool (``visualize``) and the mask-agreement measure (``mask_agreement``).
The state is the whole ``TrainState`` of a checkpoint (so that the key, the step and the
discovery network of ``masks.learned.network`` are the run's), restored on one device; with no
checkpoint it is the config's initial state (a random discovery network, step 0).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from detcon_jax import checkpoint as ckpt_lib
from detcon_jax import config as config_lib
from detcon_jax import learned_masks, paths
from detcon_jax import step as step_lib

__all__ = ["add_checkpoint_flags", "cluster_maps", "initial_state", "load_state", "restore_state",
           "upsample_ids"]


def _create(config: Any) -> step_lib.TrainState:
    # The optimiser's state only needs the right structure to restore into; the schedule's
    # lengths do not change it.
    schedules = step_lib.make_schedules(config, total_steps=1, warmup_steps=0)
    optimizer = step_lib.make_optimizer(config, schedules)
    return step_lib.create_train_state(config, jax.random.PRNGKey(config.seed),
                                       optimizer=optimizer)


def initial_state(config: Any) -> step_lib.TrainState:
    """The state a new run of ``config`` starts from (seed ``config.seed``, step 0)."""
    return jax.jit(lambda: _create(config))()


def restore_state(config: Any, workdir: str, *, step: int | None = None
                  ) -> step_lib.TrainState:
    """The ``TrainState`` of ``workdir``'s checkpoint ``step`` (default: the newest), on one
    device. ``config`` must be the run's (its model signature is checked).

    Raises:
      FileNotFoundError: no complete checkpoint (of ``step``) under ``WORKDIR/checkpoints``.
      ConfigError: the checkpoint belongs to another model.
    """
    directory = paths.join(workdir, "checkpoints")
    steps = ckpt_lib.complete_steps(directory)
    if not steps or (step is not None and step not in steps):
        wanted = "" if step is None else f" for step {step}"
        raise FileNotFoundError(f"{directory}: no complete checkpoint{wanted} (have "
                                f"{steps or 'none'})")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            jax.eval_shape(lambda: _create(config)))
    checkpointer = ckpt_lib.Checkpointer(directory, keep=len(steps),
                                         signature=config_lib.model_signature(config))
    try:
        state, _ = checkpointer.restore(abstract, steps[-1] if step is None else step)
    finally:
        checkpointer.close()
    return state


def load_state(config: Any, checkpoint: str | None = None, *, step: int | None = None
               ) -> step_lib.TrainState:
    """`restore_state` of the workdir ``checkpoint``, or `initial_state` when it is None."""
    if checkpoint is None:
        return initial_state(config)
    return restore_state(config, checkpoint, step=step)


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (a training run's workdir) and ``--step`` of a tool that reads a
    discovery network (for `load_state`)."""
    parser.add_argument("--checkpoint", default=None,
                        help="masks.source='learned': the training run's workdir whose "
                             "discovery network makes the masks (give its --config too; "
                             "default: the config's initial, random network)")
    parser.add_argument("--step", type=int, default=None,
                        help="--checkpoint's step (default: the newest)")


def cluster_maps(config: Any, state: step_lib.TrainState, images: Any) -> np.ndarray:
    """The discovery network's k-means cluster map ``[N, h, w]`` int32 of ``images``.

    ``images``: float ``[N, C, C, 3]`` in [0, 1] (the covering windows of a batch, or whole
    images squashed to ``masks.learned.image_size``). Exactly what the train step of
    ``state``'s step computes for the same batch (`learned_masks.view_segmentations`): the
    network of ``masks.learned.network``, block group ``masks.learned.layer``, the k-means
    settings, and the key ``fold_in(step_key(state), KMEANS_SALT)`` split over the N images
    (so the N must be the batch's for the ids to be the step's).
    """
    network = step_lib.make_network(config)

    @jax.jit
    def run(state, images):
        key = jax.random.fold_in(step_lib.step_key(state), learned_masks.KMEANS_SALT)
        return learned_masks.cluster_cover(config, network,
                                           step_lib.discovery_variables(config, state), key,
                                           images)

    return np.asarray(jax.device_get(run(state, np.asarray(images, np.float32))))


def upsample_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """An id grid ``[h, w]`` at ``[height, width]``: each pixel takes the cell under its centre
    (nearest neighbour, the rule `learned_masks.carry_into_view` uses)."""
    h, w = ids.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return np.asarray(ids)[rows[:, None], cols[None, :]]
