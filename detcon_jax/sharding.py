"""Device mesh and shardings: how the train state and the batches lie on the devices.

The whole data-parallel story lives here. Arrays are *global* ``jax.Array``s: the state is
replicated, every batch is split along its first dimension over the ``data`` mesh axis, and
XLA inserts the collectives. The model and the losses therefore never name an axis, and
BatchNorm statistics and contrastive negatives span the global batch on every host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "create_sharded",
    "global_batch",
    "jit_train_step",
    "make_mesh",
    "replicated",
]

DATA_AXIS = "data"


def make_mesh(axis_sizes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` over all devices (of all processes), laid out by ``jax.make_mesh``.

    ``jax.make_mesh`` orders the devices for the physical topology (on a TPU slice, rings
    along the interconnect for the all-reduces); elsewhere it keeps ``jax.devices()``
    order. A host's local batch rows are placed on its own devices wherever the mesh puts
    them (see `global_batch`). Axes are ``Auto``: XLA propagates the shardings and inserts
    the collectives, so nothing under the jitted step names an axis.

    Args:
      axis_sizes: ordered axis name -> size, already resolved (no -1; see
        `detcon_jax.config.resolve_mesh_shape`). Default: every device on ``'data'``.
      devices: the devices to use; default ``jax.devices()``.

    Returns:
      The mesh.

    Raises:
      ValueError: when the axis sizes do not multiply to the number of devices
        (``jax.make_mesh`` alone would silently use the first devices only).
    """
    devices = jax.devices() if devices is None else list(devices)
    if axis_sizes is None:
        axis_sizes = {DATA_AXIS: len(devices)}
    shape = tuple(axis_sizes.values())
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh axis sizes {dict(axis_sizes)} do not match {len(devices)} devices")
    return jax.make_mesh(shape, tuple(axis_sizes), axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: the leading (batch) dimension split over ``'data'``."""
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh has no '{DATA_AXIS}' axis: {mesh.axis_names}")
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-host numpy batch -> dict of global arrays sharded over ``'data'``.

    Each process passes its own rows (``global_batch_size / process_count`` of them); they
    fill the global rows of that process's devices in mesh order (on CPU and GPU, the
    processes' rows stacked in process order). Which global rows an image takes changes only
    its per-row random draws (augmentation, mask ids): BatchNorm statistics and the
    contrastive negatives span the whole global batch either way.
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local_batch.items()
    }


def create_sharded(create_fn: Callable[[], Any], mesh: Mesh) -> Any:
    """Runs ``create_fn`` under jit so that its output is born replicated on the mesh.

    No host ever holds an unsharded copy, and every process computes the identical state
    from the same seed.
    """
    return jax.jit(create_fn, out_shardings=replicated(mesh))()


def jit_train_step(train_step: Callable[[Any, Any], tuple[Any, Any]], mesh: Mesh
                   ) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``train_step(state, batch) -> (state, metrics)`` jitted for the mesh.

    State in and out replicated, batch sharded on the batch dimension, metrics replicated
    (scalars), and the incoming state's buffers donated to the outgoing state.
    """
    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )
