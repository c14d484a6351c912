"""Device mesh and shardings: how the train state and the batches lie on the devices.

The whole data-parallel story lives here. Arrays are *global* ``jax.Array``s: the state is
replicated, every batch is split along its first dimension over the ``data`` mesh axis, and
XLA inserts the collectives. The model and the losses therefore never name an axis, and
BatchNorm statistics and contrastive negatives span the global batch on every host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
              devices: Any = None) -> Mesh:
    """A `Mesh` over all devices (of all processes).

    Args:
      axis_sizes: ordered axis name -> size, already resolved (no -1; see
        `detcon_jax.config.resolve_mesh_shape`). Default: every device on ``'data'``.
      devices: the devices to use; default ``jax.devices()``.

    Returns:
      The mesh. Devices are laid out in ``jax.devices()`` order, which groups each process's
      devices together, so a host's local batch rows form one contiguous block of the global
      batch.
    """
    devices = jax.devices() if devices is None else devices
    if axis_sizes is None:
        axis_sizes = {DATA_AXIS: len(devices)}
    shape = tuple(axis_sizes.values())
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh axis sizes {dict(axis_sizes)} do not match {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(shape), tuple(axis_sizes.keys()))


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

    Each process passes its own rows (``global_batch_size / process_count`` of them); the
    global batch is the processes' rows stacked in process order.
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
