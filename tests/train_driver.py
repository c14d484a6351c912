"""Test helper: trains the smoke config for a few steps on fixed data and saves the result.

Run as a script in a fresh process, so that each run picks its own device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``) or joins a multi-process job on
localhost. The global batches are generated from a fixed numpy seed; every process feeds
only its own rows (``process_id``-th block of ``batch_size / num_processes``), exactly as a
per-host input pipeline would. Writes an ``.npz`` with the per-step losses and the final
state's leaves (process 0 only).

    python tests/train_driver.py --out=/tmp/r.npz --steps=3 [--image_size=96]
        [--num_processes=2 --process_id=0 --port=12345]

Without ``--num_processes`` it joins the job that ``DETCON_NUM_PROCESSES``,
``DETCON_PROCESS_ID`` and ``JAX_COORDINATOR_ADDRESS`` describe, as the train CLI does
(``launch/local.sh`` sets them).
"""

from __future__ import annotations

import argparse
import sys

from conftest import smoke_config


def global_batches(steps: int, batch: int, size: int, seed: int = 0):
    """Deterministic synthetic global batches (views in [0, 1], a few segment ids)."""
    import numpy as np

    rs = np.random.RandomState(seed)
    for _ in range(steps):
        # Blocky segmentations so that several ids survive on the feature grid.
        coarse = rs.randint(0, 6, size=(2, batch, size // 16, size // 16, 1))
        masks = coarse.repeat(16, axis=2).repeat(16, axis=3).astype(np.uint8)
        yield {
            "view1": rs.rand(batch, size, size, 3).astype(np.float32),
            "view2": rs.rand(batch, size, size, 3).astype(np.float32),
            "mask1": masks[0],
            "mask2": masks[1],
            "label": rs.randint(-1, 10, size=(batch,)).astype(np.int32),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--method", default="detcon_b")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    import jax

    if args.num_processes > 1:
        jax.config.update("jax_platforms", "cpu")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
            process_id=args.process_id)
    else:
        # Started by launch/local.sh: the job is in the environment, as for the train CLI.
        from detcon_jax import distributed

        distributed.maybe_initialize(requested=False)
    import numpy as np

    from detcon_jax import config as config_lib
    from detcon_jax import sharding
    from detcon_jax import step as step_lib

    config = smoke_config()
    config.data.image_size = args.image_size
    config.method = args.method
    if args.method in ("byol", "simclr"):
        config.masks.source = "none"
    config_lib.validate(config)
    config_lib.validate_runtime(config, device_count=jax.device_count(),
                                process_count=jax.process_count())
    schedules = step_lib.make_schedules(config, total_steps=10, warmup_steps=2)
    optimizer = step_lib.make_optimizer(config, schedules)
    mesh = sharding.make_mesh(config_lib.resolve_mesh_shape(config.mesh, jax.device_count()))
    state = sharding.create_sharded(
        lambda: step_lib.create_train_state(config, jax.random.PRNGKey(config.seed),
                                            optimizer=optimizer), mesh)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer,
                                 num_devices=mesh.shape[sharding.DATA_AXIS]), mesh)

    rows = config.batch_size // jax.process_count()
    lo = jax.process_index() * rows
    batches = [sharding.global_batch({k: v[lo:lo + rows] for k, v in batch.items()}, mesh)
               for batch in global_batches(args.steps, config.batch_size, args.image_size)]
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp

        # Compile first, then meet at a coordination-service barrier: on CPU each gloo
        # communicator connects when first used and gives up after 30 s, less than the
        # spread of the processes' compile times on a loaded machine.
        train_step = train_step.lower(state, batches[0]).compile()
        ocp.multihost.sync_global_processes(
            "train_driver: compiled", processes=set(range(jax.process_count())),
            timeout=1800)
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))

    # The state is replicated: each process's first local shard is the full value.
    leaves = jax.tree_util.tree_leaves_with_path(state)
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
              for path, leaf in leaves}
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), **{f"leaf{k}": v for k, v in arrays.items()})
    print(f"process {jax.process_index()}: devices={jax.device_count()} losses={losses}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
