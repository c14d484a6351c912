"""Pre-training: ``train(config, workdir)`` builds the run, then loops; callable from Python.

    from detcon_jax import trainer
    state = trainer.train(config, "/tmp/detcon_run")  # config: an experiments/*.py config

Start-up checks the whole config (and the workdir's checkpoint, if any) before anything is
written, then resumes from the newest complete checkpoint or starts a new run. After each
step the loop runs five concerns in sequence:

1. preemption: ask the stop condition (the same answer on every host);
2. checkpoint cadence: a save is due on ``checkpoint.every_steps``, at the last step and on
   preemption;
3. NaN check: on log and save steps only (one host sync), over every step since the
   previous check, so that no checkpoint is ever written after a non-finite step;
4. metric window and throughput/ETA: the means since the previous log line, with
   steps/s, images/s and the remaining time;
5. the save itself (metrics are flushed first), then the stop.

``detcon_jax.train`` is the command line over this module (flags, exit codes, SIGTERM).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from detcon_jax import checkpoint as ckpt_lib
from detcon_jax import config as config_lib
from detcon_jax import data, diagnostics, distributed, mask_pictures, optim, paths, sharding
from detcon_jax import metrics as metrics_lib
from detcon_jax import step as step_lib

__all__ = [
    "DataError",
    "NonFiniteError",
    "StopCondition",
    "checkpoint_dir",
    "derive_steps",
    "num_examples",
    "train",
]


class DataError(RuntimeError):
    """A record the input pipeline cannot use and must not skip silently (named in the text)."""


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; no checkpoint was written after it."""

    def __init__(self, step: int, newest_checkpoint: int | None):
        self.step = step
        self.newest_checkpoint = newest_checkpoint
        newest = "none" if newest_checkpoint is None else f"step {newest_checkpoint}"
        super().__init__(
            f"non-finite loss at step {step}; stopped (newest checkpoint: {newest})")


class StopCondition(Protocol):
    """Decides after each step whether to checkpoint and stop (e.g. on preemption)."""

    def should_stop(self, step: int) -> bool:
        """Called on every host after every step; must give every host the same answer."""
        ...


class _NeverStop:
    def should_stop(self, step: int) -> bool:
        del step
        return False


# ----------------------------------------------------------------------------- paths
# Every file a run writes is named here (checkpoints, config.json) or by
# `metrics.create_writer` (metrics.jsonl, TensorBoard events).


def checkpoint_dir(workdir: str) -> str:
    """The directory where a run in ``workdir`` (a local path or a URI) keeps checkpoints."""
    return paths.join(workdir, "checkpoints")


def _write_config(config: Any, workdir: str) -> None:
    # One whole object: a bucket has no folders to create and no partial files.
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


# ------------------------------------------------------------------- steps and data


def derive_steps(config: Any, images_per_epoch: int) -> tuple[int, int]:
    """(warmup_steps, total_steps) from epochs, data-set size and the global batch."""
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
    config_lib.check_schedule(warmup, total)
    return warmup, total


def num_examples(config: Any) -> int:
    """Images per epoch: ``data.num_examples`` when set, else counted from the source."""
    if config.data.num_examples is not None:
        return config.data.num_examples
    return data.num_examples(config.data)


def _make_dataset(config: Any, *, start_batch: int
                  ) -> tuple[Iterator[dict[str, np.ndarray]], data.PipelineStats]:
    """This host's batches, fast-forwarded past the ``start_batch`` batches already used.

    Returns the numpy iterator and the pipeline's `PipelineStats` (skipped-image count).
    """
    # The input pipeline must never take accelerator memory from JAX.
    tf.config.set_visible_devices([], "GPU")
    stats = data.PipelineStats()
    if start_batch:
        logging.info("Fast-forwarding the input pipeline by %d batches.", start_batch)
    ds = data.make_pretrain_dataset(
        config.data,
        config.masks,
        batch_size=config.batch_size // jax.process_count(),
        stats=stats,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        skip_batches=start_batch,
    )
    return ds.as_numpy_iterator(), stats


def _next_batch(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The next host batch; a refused record (mask and image sizes differ) or a corrupt
    TFRecord shard (truncated, bad checksum) is a `DataError`."""
    try:
        return next(batches)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        # tf.debugging.Assert messages name the record; keep the first line of TF's text.
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e.message))
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        raise DataError(lines[0] if lines else str(e)) from None


def _skipped_images(stats: data.PipelineStats) -> int:
    """Corrupt images skipped so far, summed over the hosts (a collective when multi-host)."""
    local = int(stats.skipped)
    if jax.process_count() == 1:
        return local
    return int(np.sum(multihost_utils.process_allgather(np.int64(local))))


# ------------------------------------------------------------------------- start-up


def _check(config: Any, workdir: str) -> tuple[int, int]:
    """Every check that can fail before the workdir is written; returns (warmup, total).

    Raises:
      ConfigError: naming the key, path or checkpoint.
    """
    config_lib.validate(config)
    # A bucket that cannot be reached is one line naming it, before anything is written
    # (and never a local ``./gs:/...`` folder: every path goes through `paths`).
    paths.workdir_path(workdir)
    path = config.data.path
    if path and config_lib.is_url(path) and not data.data_dir_exists(path):
        # config.validate checks only local paths (it does not import TensorFlow).
        raise config_lib.ConfigError(config_lib.data_path_error(path))
    config_lib.validate_runtime(
        config, device_count=jax.device_count(), process_count=jax.process_count())
    ckpt_lib.check_workdir_compatible(
        checkpoint_dir(workdir), config_lib.model_signature(config))
    if jax.process_count() > 1:
        # Every host reads the workdir before any host writes to it (a host that looked
        # after another created the checkpoint directory would take another code path).
        multihost_utils.sync_global_devices("detcon_jax.trainer: workdir checked")
    return derive_steps(config, num_examples(config))


def _init_or_restore(config: Any, mesh: jax.sharding.Mesh, checkpointer: ckpt_lib.Checkpointer,
                     optimizer: Any) -> tuple[step_lib.TrainState, int, int]:
    """(state, step, data position): the newest complete checkpoint's, or a new run's."""

    def create() -> step_lib.TrainState:
        return step_lib.create_train_state(
            config, jax.random.PRNGKey(config.seed), optimizer=optimizer)

    start = checkpointer.latest_step()
    if start is None:
        logging.info("Initialising a new run.")
        return sharding.create_sharded(create, mesh), 0, 0
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
        jax.eval_shape(create))
    state, meta = checkpointer.restore(abstract, start)
    logging.info("Resumed from %s at step %d.", checkpointer.directory, start)
    return state, start, int(meta.get("data_position", start))


# ------------------------------------------------------------------------- the loop


def _checkpoint_due(step: int, *, every: int, total: int) -> bool:
    """The checkpoint cadence (preemption saves come on top)."""
    return step % every == 0 or step == total


class _MetricWindow:
    """The step metrics since the previous log line, kept on device until read."""

    def __init__(self) -> None:
        self._steps: list[tuple[int, dict[str, jax.Array]]] = []
        self._checked = 0
        # The window `means` read last, per step on the host (for the zero-loss check).
        self.last: list[tuple[int, dict[str, np.ndarray]]] = []

    def add(self, step: int, step_metrics: dict[str, jax.Array]) -> None:
        self._steps.append((step, step_metrics))

    def first_non_finite(self) -> int | None:
        """The first step since the previous check whose loss or gradient norm is NaN/Inf."""
        unchecked = self._steps[self._checked:]
        self._checked = len(self._steps)
        values = jax.device_get([(m["loss"], m["grad_norm"]) for _, m in unchecked])
        for (step, _), (loss, grad_norm) in zip(unchecked, values, strict=True):
            if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
                return step
        return None

    def means(self) -> dict[str, float]:
        """Means over the window (schedules: the newest value), then starts a new window.

        Single-step values of a small batch are too noisy to show a trend.
        """
        window = jax.device_get([m for _, m in self._steps])
        self.last = [(step, m) for (step, _), m in zip(self._steps, window, strict=True)]
        self._steps.clear()
        self._checked = 0
        scalars = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
        for key in ("lr", "tau"):
            if key in window[-1]:
                scalars[key] = float(window[-1][key])
        return scalars


class _Throughput:
    """Steps per second since the previous reading, and the time the rest will take."""

    def __init__(self, step: int, total: int) -> None:
        self._step, self._time, self._total = step, time.perf_counter(), total

    def read(self, step: int) -> tuple[float, str]:
        """(steps/s since the previous reading, ETA as ``H:MM:SS``)."""
        now = time.perf_counter()
        steps_per_s = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        eta = int(max((self._total - step) / steps_per_s, 0)) if steps_per_s > 0 else 0
        return steps_per_s, f"{eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"


class _ImageSummaries:
    """Every ``image_every_steps`` (0: never), a TensorBoard picture of what the loss sees at
    that step: both augmented views, their masks, the feature-grid masks and the sampled ids
    (`mask_pictures.loss_panel`), from the step's own inputs (`step.make_loss_inputs`).

    Every process runs the jitted function (it spans the global batch); process 0 writes.
    """

    TAG = "masks/what_the_loss_sees"
    NUM_IMAGES = 4
    TILE = 128

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, *, is_primary: bool) -> None:
        self._every, self._primary = config.image_every_steps, is_primary
        fn = step_lib.make_loss_inputs(config, num_images=self.NUM_IMAGES)
        self._inputs = jax.jit(fn, out_shardings=sharding.replicated(mesh))

    def maybe_write(self, writer: Any, step: int, state: step_lib.TrainState,
                    batch: dict[str, jax.Array]) -> None:
        """Call before training ``step`` on ``batch`` (``state`` is the state it starts from)."""
        if not self._every or step % self._every:
            return
        a = jax.device_get(self._inputs(step_lib.step_key(state), batch))
        if not self._primary:
            return
        rows = mask_pictures.loss_panel(
            (a["view1"], a["view2"]), (a["mask1"], a["mask2"]), (a["cells1"], a["cells2"]),
            (a["ids1"], a["ids2"]), tile=self.TILE)
        picture = mask_pictures.with_header(rows, mask_pictures.LOSS_PANEL_COLUMNS,
                                            legend=mask_pictures.LOSS_PANEL_LEGEND)
        writer.write_images(step, {self.TAG: picture[None]})


def _mask_summary(scalars: dict[str, float]) -> str:
    """The console's mask statistics (``""`` for the one-mask methods)."""
    if "positive_fraction" not in scalars:
        return ""
    return (f"  positives {scalars['positive_fraction']:.2f}  ids/view "
            f"{scalars['mask_ids_view1']:.1f}/{scalars['mask_ids_view2']:.1f}")


def train(config: Any, workdir: str, *,
          stop: StopCondition | None = None) -> step_lib.TrainState:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if it has one.

    Args:
      config: an experiment config (``experiments/*.py``'s ``get_config()``); validated here.
      workdir: where checkpoints, ``config.json``, ``metrics.jsonl`` and TensorBoard events
        go (the same directory resumes).
      stop: asked after every step whether to checkpoint and stop (the command line passes
        its SIGTERM watcher); default: never stop early.

    Returns:
      The state after the last step run (the total, or the step a stop came at).

    Raises:
      ConfigError: for an invalid config or a workdir of another model, before anything is
        written.
      NonFiniteError: a NaN/Inf loss or gradient; the newest checkpoint predates it.
      DataError: a record the pipeline refuses.
    """
    warmup_steps, total_steps = _check(config, workdir)
    if (grid_warning := diagnostics.feature_grid_warning(config)) is not None:
        logging.warning(grid_warning)

    # Everything is valid: from here on the workdir is written.
    is_primary = jax.process_index() == 0
    if is_primary:
        _write_config(config, workdir)
    mesh = sharding.make_mesh(config_lib.resolve_mesh_shape(config.mesh, jax.device_count()))
    schedules = step_lib.make_schedules(
        config, total_steps=total_steps, warmup_steps=warmup_steps)
    optimizer = step_lib.make_optimizer(config, schedules)
    checkpointer = ckpt_lib.Checkpointer(
        checkpoint_dir(workdir), keep=config.checkpoint.keep,
        signature=config_lib.model_signature(config))
    state, start, data_start = _init_or_restore(config, mesh, checkpointer, optimizer)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer,
                                 num_devices=mesh.shape.get(sharding.DATA_AXIS, 1)), mesh)
    batches, data_stats = _make_dataset(config, start_batch=data_start)
    writer = metrics_lib.create_writer(workdir, is_primary=is_primary, resume_step=start,
                                       tensorboard_dir=config.tensorboard_dir)
    stop = _NeverStop() if stop is None else stop
    window = _MetricWindow()
    zero_watch = diagnostics.ZeroSignalWatch(config, logging.warning)
    images = _ImageSummaries(config, mesh, is_primary=is_primary)
    throughput = _Throughput(start, total_steps)

    logging.info("Training steps %d..%d (%d of warm-up) on %d device(s) in %d process(es); "
                 "the first step compiles.", start + 1, total_steps, warmup_steps,
                 jax.device_count(), jax.process_count())
    peer_lost = False
    try:
        batch = None
        if start < total_steps:
            batch = sharding.global_batch(_next_batch(batches), mesh)
        for step in range(start + 1, total_steps + 1):
            images.maybe_write(writer, step, state, batch)
            state, step_metrics = train_step(state, batch)
            # One-deep prefetch: the step was dispatched asynchronously, so the next batch's
            # host pipeline read and host-to-device copy run while it computes. A batch
            # fetched here but not trained on before a stop is not counted in the checkpoint's
            # data position (that counts steps), so a resume reads it again.
            if step < total_steps:
                batch = sharding.global_batch(_next_batch(batches), mesh)
            window.add(step, step_metrics)

            stopping = stop.should_stop(step)
            save = stopping or _checkpoint_due(
                step, every=config.checkpoint.every_steps, total=total_steps)
            log = stopping or step == total_steps or step % config.log_every_steps == 0
            if not (save or log):
                continue

            bad = window.first_non_finite()
            if bad is not None:
                raise NonFiniteError(bad, checkpointer.latest_step())

            if log:
                scalars = window.means()
                zero_watch.check(window.last)
                steps_per_s, eta = throughput.read(step)
                scalars["steps_per_s"] = steps_per_s
                scalars["images_per_s"] = steps_per_s * config.batch_size
                scalars["skipped_images"] = _skipped_images(data_stats)
                writer.write_scalars(step, scalars)
                logging.info("step %d/%d  loss %.4f  lr %.4g  %.2f steps/s  %.1f img/s  ETA %s%s",
                             step, total_steps, scalars["loss"], scalars["lr"], steps_per_s,
                             scalars["images_per_s"], eta, _mask_summary(scalars))

            if save:
                # Metrics up to this step reach the disk with (before) its checkpoint, so a
                # SIGKILL later leaves metrics.jsonl complete up to the newest checkpoint.
                writer.flush()
                checkpointer.save(step, state, data_position=data_start + step - start)
            if stopping:
                logging.warning("Stopping at step %d (stop requested) after its checkpoint.",
                                step)
                break
        else:
            logging.info("Training finished at step %d.", total_steps)
    except Exception as e:
        peer_lost = distributed.lost_peer(e) is not None
        raise
    finally:
        writer.flush()
        writer.close()
        if not peer_lost:  # closing waits for pending saves, i.e. also for the dead peer
            checkpointer.close()
    return state
