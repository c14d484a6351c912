"""Command-line entry point for pre-training: config + workdir in, checkpoints + metrics out.

    python -m detcon_jax.train --config=experiments/smoke.py --workdir=/tmp/detcon_smoke \
        [--config.batch_size=16 ...] [--distributed]

Thin on purpose: validate the config, start the distributed runtime when asked, build the
mesh, state, step and input pipeline, then loop with logging and checkpoint cadence.

Failure behaviour (docs/failure_behaviour.md states it for users):
- a bad config or flag (unknown key, wrong type, batch size not divisible by the devices,
  missing data directory, local or ``gs://``, a workdir holding another model's
  checkpoint) prints one line ``error: ...`` and exits with status 2 before anything is
  written;
- SIGTERM (preemption) saves a checkpoint at the current step and exits 0; with several
  processes, all of them agree on the step through JAX's preemption sync point;
- SIGKILL at any moment: a restart resumes from the newest complete checkpoint (orbax
  never exposes a partial one) and the data position, so at most one checkpoint interval
  is lost and the result equals an uninterrupted run; metrics.jsonl is flushed with every
  checkpoint and trimmed to the restored step;
- a NaN/Inf loss (or gradient) stops training with a message naming the step and status
  1; no checkpoint is written after the last finite step, so the newest one is good;
- corrupt or truncated images are skipped, logged once by name and counted in the
  ``skipped_images`` metric; a record the pipeline refuses (mask size differs from its
  image, uint8 id overflow in a 16-bit id map) stops training with status 3 and a line
  ``error: data: ...`` naming the record;
- a lost peer process (multi-process runs; `detcon_jax.distributed`): a collective that
  fails because a peer is gone ends this process at once with status 4 and one line
  ``error: lost peer process N ...``; otherwise JAX's coordination service ends it after
  ``--heartbeat_timeout`` seconds without the peer's heartbeats.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from detcon_jax import config as config_lib
from detcon_jax import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/*.py); override keys with "
    "--config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-process runs). Also "
    "implied by DETCON_NUM_PROCESSES; see launch/README.md.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", distributed.HEARTBEAT_TIMEOUT_S, "Multi-process runs: seconds "
    "without a heartbeat after which JAX's coordination service declares a process lost "
    "and ends the job.", lower_bound=1)

EXIT_CONFIG_ERROR = 2
EXIT_NON_FINITE = 1
EXIT_DATA_ERROR = 3


def _error_exit(message: str) -> None:
    """One line on stderr and exit status 2 (bad config or flags)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CONFIG_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, but any flag or config error is one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # config_flags raises plain KeyError/AttributeError/TypeError
        text = " ".join(str(e).split()).replace('"', "")
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        where = f" (in {' '.join(bad)})" if bad else ""
        _error_exit(f"bad flag: {type(e).__name__}: {text}{where}")
        raise  # unreachable


class _QuietLibraries:
    """Logging filter: keeps orbax's per-save INFO chatter out of the console progress."""

    def filter(self, record: Any) -> bool:
        return record.levelno >= 30 or "orbax" not in record.pathname


def _maybe_initialize_distributed() -> None:
    distributed.maybe_initialize(requested=_DISTRIBUTED.value,
                                 heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)


class _StopRequest:
    """Turns SIGTERM into a request to checkpoint and exit at a step boundary.

    One process: a Python signal handler sets a flag, read after every step. Several
    processes: JAX's preemption sync point (``jax.distributed`` installs a SIGTERM notifier
    in every process and the coordination service picks one step, max over the hosts + 1,
    at which all of them stop), so a signal to any one host stops all of them after the
    same step. When the preemption service is disabled (``jax_enable_preemption_service``
    false) the hosts instead all-gather their Python signal flags after every step, which
    gives the same agreement for a signal sent to every host (what schedulers do).
    """

    def __init__(self) -> None:
        self.signalled = False
        self._multi = jax.process_count() > 1
        self._sync_point = self._multi and bool(jax.config.jax_enable_preemption_service)
        if not self._sync_point:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Received signal %d: will checkpoint and stop after this step.", signum)
        self.signalled = True

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step``; the same answer on every host."""
        if not self._multi:
            return self.signalled
        from jax.experimental import multihost_utils

        if self._sync_point:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        flags = multihost_utils.process_allgather(np.int32(self.signalled))
        return bool(np.any(flags))


def derive_steps(config: Any, images_per_epoch: int) -> tuple[int, int]:
    """(warmup_steps, total_steps) from epochs, data-set size and the global batch."""
    from detcon_jax import optim

    try:
        warmup, total = optim.derive_steps(
            num_epochs=config.num_epochs, images_per_epoch=images_per_epoch,
            batch_size=config.batch_size)
    except ValueError as e:  # fewer images than one global batch
        if config.num_steps is None:
            raise config_lib.ConfigError(
                f"config key 'batch_size': {' '.join(str(e).split())} (set num_steps or "
                "data.num_examples, or use more data)") from None
        warmup, total = 0, config.num_steps
    if config.optim.warmup_epochs is not None:
        warmup = config.optim.warmup_epochs * images_per_epoch // config.batch_size
    if config.num_steps is not None:
        total = config.num_steps
    if warmup >= total:
        raise config_lib.ConfigError(
            f"config key 'optim.warmup_epochs': {warmup} warm-up steps >= {total} total steps")
    return warmup, total


def _make_dataset(config: Any, *, start_batch: int):
    """This host's batches, fast-forwarded past the ``start_batch`` batches already used.

    Returns the numpy iterator and the pipeline's `PipelineStats` (skipped-image count).
    """
    import tensorflow as tf

    from detcon_jax import input_pipeline

    # The input pipeline must never take accelerator memory from JAX.
    tf.config.set_visible_devices([], "GPU")
    d = config.data
    stats = input_pipeline.PipelineStats()
    if start_batch:
        logging.info("Fast-forwarding the input pipeline by %d batches.", start_batch)
    ds = input_pipeline.make_pretrain_dataset(
        d.source,
        batch_size=config.batch_size // jax.process_count(),
        image_size=d.image_size,
        data_dir=d.path or None,
        split=d.split,
        mask_source=config.masks.source,
        tfds_name=d.tfds_name or None,
        grid_size=config.masks.grid_size,
        fh_scale=d.fh_scale,
        fh_min_size=d.fh_min_size,
        fh_index=config.masks.fh_index,
        synthetic_num_images=d.synthetic_num_images,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle_buffer=d.shuffle_buffer,
        cache=d.cache,
        deterministic=d.deterministic,
        seed=config.seed,
        skip_batches=start_batch,
        stats=stats,
    )
    return ds.as_numpy_iterator(), stats


def _next_batch(batches: Any) -> Any:
    """The next host batch; a refused record (mask and image sizes differ) or a corrupt
    TFRecord shard (truncated, bad checksum) is a `DataError`."""
    import tensorflow as tf

    try:
        return next(batches)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        # tf.debugging.Assert messages name the record; keep the first line of TF's text.
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e.message))
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        raise DataError(lines[0] if lines else str(e)) from None


class DataError(RuntimeError):
    """A record the input pipeline cannot use and must not skip silently (named in the text)."""


def _skipped_images(stats: Any) -> int:
    """Corrupt images skipped so far, summed over the hosts (a collective when multi-host)."""
    local = int(stats.skipped)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int64(local))))


def _check_remote_data_path(config: Any) -> None:
    """``gs://``-style data paths are checked here (config.validate only sees local ones)."""
    path = config.data.path
    if path and config_lib.is_url(path):
        from detcon_jax import input_pipeline

        if not input_pipeline.data_dir_exists(path):
            raise config_lib.ConfigError(config_lib.data_path_error(path))


def _num_examples(config: Any) -> int:
    from detcon_jax import input_pipeline

    d = config.data
    if d.num_examples is not None:
        return d.num_examples
    return input_pipeline.num_examples(
        d.source, data_dir=d.path or None, split=d.split, tfds_name=d.tfds_name or None,
        synthetic_num_images=d.synthetic_num_images)


def _first_non_finite(pending: list[tuple[int, dict]]) -> int | None:
    """Step of the first update whose loss or gradient norm is NaN/Inf (one host sync)."""
    values = jax.device_get([(m["loss"], m["grad_norm"]) for _, m in pending])
    for (step, _), (loss, grad_norm) in zip(pending, values, strict=True):
        if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
            return step
    return None


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(config: Any, workdir: str, *, stop: _StopRequest | None = None) -> int:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns exit code.

    ``stop``: the SIGTERM watcher (made here when None; ``main`` makes it first thing, so
    that a signal during start-up is not lost).

    Raises:
      ConfigError: for invalid configs, before anything is written.
      DataError: a record the pipeline refuses (after the newest checkpoint was written).
    """
    # Heavy libraries (orbax, flax, TensorFlow through clu) load only for a valid config, so
    # that a bad flag fails within a second or two.
    from detcon_jax import checkpoint as ckpt_lib
    from detcon_jax import metrics as metrics_lib
    from detcon_jax import sharding
    from detcon_jax import step as step_lib

    config_lib.validate(config)
    _check_remote_data_path(config)
    config_lib.validate_runtime(
        config, device_count=jax.device_count(), process_count=jax.process_count())
    signature = config_lib.model_signature(config)
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    ckpt_lib.check_workdir_compatible(ckpt_dir, signature)
    if jax.process_count() > 1:
        # Every host reads the workdir before any host writes to it (a host that looked
        # after another created the checkpoint directory would take another code path).
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("detcon_jax.train: workdir checked")
    warmup_steps, total_steps = derive_steps(config, _num_examples(config))

    # Everything is valid: from here on the workdir is written.
    is_primary = jax.process_index() == 0
    if is_primary:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    mesh_shape = config_lib.resolve_mesh_shape(config.mesh, jax.device_count())
    mesh = sharding.make_mesh(mesh_shape)
    schedules = step_lib.make_schedules(
        config, total_steps=total_steps, warmup_steps=warmup_steps)
    optimizer = step_lib.make_optimizer(config, schedules)

    def create():
        return step_lib.create_train_state(
            config, jax.random.PRNGKey(config.seed), optimizer=optimizer)

    checkpointer = ckpt_lib.Checkpointer(
        ckpt_dir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
        signature=signature)
    start = checkpointer.latest_step()
    if start is None:
        logging.info("Initialising a new run (%d steps, %d warm-up).", total_steps, warmup_steps)
        state = sharding.create_sharded(create, mesh)
        data_position = 0
        start = 0
    else:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
            jax.eval_shape(create))
        state, meta = checkpointer.restore(abstract, start)
        data_position = int(meta.get("data_position", start))
        logging.info("Resumed from %s at step %d.", ckpt_dir, start)

    train_step = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer,
                                 num_devices=mesh.shape.get(sharding.DATA_AXIS, 1)), mesh)
    batches, data_stats = _make_dataset(config, start_batch=data_position)
    writer = metrics_lib.create_writer(workdir, is_primary=is_primary, resume_step=start)
    stop = stop if stop is not None else _StopRequest()

    step = start
    last_saved = start
    pending: list[tuple[int, dict]] = []
    timer_step, timer = step, time.perf_counter()
    exit_code = 0
    logging.info("Training steps %d..%d on %d device(s) in %d process(es); the first step "
                 "compiles.", start + 1, total_steps, jax.device_count(), jax.process_count())
    try:
        while step < total_steps:
            batch = sharding.global_batch(_next_batch(batches), mesh)
            state, step_metrics = train_step(state, batch)
            step += 1
            pending.append((step, step_metrics))
            stopping = stop.should_stop(step)
            final = step == total_steps
            save = stopping or final or step % config.checkpoint.every_steps == 0
            if not (save or step % config.log_every_steps == 0):
                continue
            bad = _first_non_finite(pending)
            if bad is not None:
                logging.error("Non-finite loss or gradient at step %d; stopping. The newest "
                              "checkpoint (step %s) is intact.", bad, checkpointer.latest_step())
                print(f"error: non-finite loss at step {bad}; stopped (newest checkpoint: "
                      f"step {last_saved})", file=sys.stderr, flush=True)
                exit_code = EXIT_NON_FINITE
                break
            if step % config.log_every_steps == 0 or final or stopping:
                # Means over the steps since the last log: single-step values of a small
                # batch are too noisy to show a trend.
                window = jax.device_get([m for _, m in pending])
                scalars = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
                for key in ("lr", "tau"):  # schedules: the current value, not a mean
                    if key in window[-1]:
                        scalars[key] = float(window[-1][key])
                now = time.perf_counter()
                steps_per_s = (step - timer_step) / max(now - timer, 1e-9)
                timer_step, timer = step, now
                scalars["steps_per_s"] = steps_per_s
                scalars["images_per_s"] = steps_per_s * config.batch_size
                scalars["skipped_images"] = _skipped_images(data_stats)
                writer.write_scalars(step, scalars)
                eta = (total_steps - step) / steps_per_s if steps_per_s > 0 else 0.0
                logging.info("step %d/%d  loss %.4f  lr %.4g  %.2f steps/s  %.1f img/s  ETA %s",
                             step, total_steps, scalars["loss"], scalars["lr"], steps_per_s,
                             scalars["images_per_s"], _format_eta(eta))
            pending.clear()
            if save:
                # Metrics up to this step reach the disk with (before) its checkpoint, so a
                # SIGKILL later leaves metrics.jsonl complete up to the newest checkpoint.
                writer.flush()
                checkpointer.save(step, state, data_position=data_position + step - start,
                                  force=True)
                last_saved = step
            if stopping:
                logging.warning("Stopping at step %d after the preemption checkpoint.", step)
                break
    except Exception as e:
        distributed.exit_if_lost_peer(e)  # before the cleanup below waits for the dead peer
        raise
    finally:
        writer.flush()
        writer.close()
        checkpointer.close()
    if exit_code == 0 and step == total_steps:
        logging.info("Training finished at step %d.", step)
    return exit_code


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _error_exit(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        _error_exit("--config is required (e.g. --config=experiments/smoke.py)")
    if not _WORKDIR.value:
        _error_exit("--workdir is required")
    for handler in logging.get_absl_logger().handlers + [logging.get_absl_handler()]:
        handler.addFilter(_QuietLibraries())
    try:
        config_lib.validate(_CONFIG.value)  # before the distributed runtime starts
        _maybe_initialize_distributed()
        stop = _StopRequest()
        code = train(_CONFIG.value, _WORKDIR.value, stop=stop)
    except config_lib.ConfigError as e:
        _error_exit(str(e))
    except DataError as e:
        print(f"error: data: {e}", file=sys.stderr, flush=True)
        code = EXIT_DATA_ERROR
    except Exception as e:
        distributed.exit_if_lost_peer(e)
        raise
    sys.exit(code)


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
