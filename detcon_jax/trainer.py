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

(Somewhat over 500 lines: the run's whole life cycle, start-up checks, restore, the loop
and its finish, is kept in one module so that it reads in order; what each step prints is
in `console`, the pictures in `mask_pictures`, the warnings in `diagnostics`.)
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from detcon_jax import checkpoint as ckpt_lib
from detcon_jax import config as config_lib
from detcon_jax import (
    console,
    data,
    diagnostics,
    distributed,
    mask_pictures,
    optim,
    paths,
    sharding,
    warm_start,
)
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
    logging.info("Building the input pipeline (%s source).", config.data.source)
    if start_batch:
        logging.info("Fast-forwarding the input pipeline by %d batches.", start_batch)
    with console.native_noise_filtered():
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


def _check(config: Any, workdir: str
           ) -> tuple[int, int, int | None, warm_start.Variables | None]:
    """Every check that can fail before the workdir is written.

    Returns:
      (warm-up steps, total steps, the workdir's newest complete checkpoint or None, the
      ``init_checkpoint`` encoder of a new run or None).

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
    latest = ckpt_lib.check_workdir_compatible(
        checkpoint_dir(workdir), config_lib.model_signature(config))
    if jax.process_count() > 1:
        # Every host reads the workdir before any host writes to it (a host that looked
        # after another created the checkpoint directory would take another code path).
        multihost_utils.sync_global_devices("detcon_jax.trainer: workdir checked")
    try:
        data.check_source(config.data, config.masks)
    except FileNotFoundError as e:
        raise config_lib.ConfigError(f"config key 'data.path': {e}") from None
    warmup, total = derive_steps(config, num_examples(config))
    encoder = None
    if config.init_checkpoint and latest is None:
        schedules = step_lib.make_schedules(config, total_steps=total, warmup_steps=warmup)
        optimizer = step_lib.make_optimizer(config, schedules)
        abstract = jax.eval_shape(lambda: step_lib.create_train_state(
            config, jax.random.PRNGKey(config.seed), optimizer=optimizer))
        encoder = warm_start.load(config.init_checkpoint, abstract)
    return warmup, total, latest, encoder


def _init_or_restore(config: Any, mesh: jax.sharding.Mesh, checkpointer: ckpt_lib.Checkpointer,
                     optimizer: Any, encoder: warm_start.Variables | None = None
                     ) -> tuple[step_lib.TrainState, int, int]:
    """(state, step, data position): the newest complete checkpoint's, or a new run's (with
    ``encoder``, when given, as its online and target encoder)."""

    def create() -> step_lib.TrainState:
        return step_lib.create_train_state(
            config, jax.random.PRNGKey(config.seed), optimizer=optimizer)

    start = checkpointer.latest_step()
    if start is None:
        with console.phase("Initialising a new run (compiling and running the model's "
                           f"initialisation on {mesh.size} device(s))"):
            state = sharding.create_sharded(create, mesh)
            jax.block_until_ready(state)
        if encoder is not None:
            state = warm_start.apply(state, encoder)
            logging.info("Encoder (online and target) initialised from %s.",
                         config.init_checkpoint)
        return state, 0, 0
    if config.init_checkpoint:
        logging.info("Resuming: init_checkpoint %s is not read (the workdir's checkpoint "
                     "holds the encoder).", config.init_checkpoint)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
        jax.eval_shape(create))
    with console.phase(f"Restoring {checkpointer.directory} at step {start}"):
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


# --------------------------------------------------------------------- run life cycle


def default_compilation_cache_dir() -> str:
    """``$XDG_CACHE_HOME/detcon_jax/jax`` (default ``~/.cache/detcon_jax/jax``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "detcon_jax", "jax")


def compilation_cache_dir(setting: str | None) -> str | None:
    """The persistent compilation cache a run uses (None: off).

    ``setting`` is ``config.compilation_cache_dir``: a path (or URI) is used as given, ``''``
    turns the cache off, ``None`` keeps a directory JAX already has (the environment's
    ``JAX_COMPILATION_CACHE_DIR`` or the caller's ``jax.config``), else the user cache dir.
    """
    if setting is not None:
        return setting or None
    return jax.config.jax_compilation_cache_dir or default_compilation_cache_dir()


def _enable_compilation_cache(setting: str | None) -> None:
    """A resumed run (or a re-run of a config) loads its compiled programs instead of
    compiling them again; must run before the process's first compilation."""
    directory = compilation_cache_dir(setting)
    if directory and directory != jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)
    if directory:
        logging.info("JAX compilation cache: %s", directory)


def _first_batch_text(config: Any) -> str:
    """What the first batch waits for, for the progress line before the first step."""
    fh_on_the_fly = (config.masks.source == "fh"
                     and not data.sources.source_class(config.data.source).stored_fh)
    if fh_on_the_fly:
        return ("Reading the first batch (Felzenszwalb masks are computed on the host, "
                "which takes a while at large images)")
    return "Reading the first batch"


def _already_finished(config: Any, workdir: str, latest: int | None, total_steps: int,
                      mesh: jax.sharding.Mesh, optimizer: Any) -> step_lib.TrainState | None:
    """The final state, without building the pipeline or the step, when ``workdir`` holds a
    checkpoint at or past the last step; None otherwise."""
    if latest is None or latest < total_steps:
        return None
    checkpointer = ckpt_lib.Checkpointer(
        checkpoint_dir(workdir), keep=config.checkpoint.keep,
        signature=config_lib.model_signature(config))
    try:
        state, _, _ = _init_or_restore(config, mesh, checkpointer, optimizer)
    finally:
        checkpointer.close()
    logging.info("%s already finished at step %d (of %d): nothing to train.",
                 workdir, latest, total_steps)
    return state


def _first_step_done(step_metrics: Mapping[str, jax.Array], throughput: console.Throughput,
                     step: int, *, since: float) -> float:
    """Waits for the first (compiling) step of this process, then starts timing the steps
    after it; returns the seconds since ``since`` (the compilation, mostly)."""
    jax.block_until_ready(step_metrics)
    throughput.started(step)
    seconds = time.perf_counter() - since
    logging.info("First step done in %.1f s (compiling the step, mostly).", seconds)
    return seconds


def _final_loss(scalars: Mapping[str, float]) -> float | None:
    loss = scalars.get("loss")
    return None if loss is None else float(loss)


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
        a = jax.device_get(self._inputs(step_lib.step_key(state), batch, state))
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
    started = time.perf_counter()
    is_primary = jax.process_index() == 0
    console.configure(is_primary=is_primary)
    warmup_steps, total_steps, latest, encoder = _check(config, workdir)
    # Everything is valid: from here on the workdir is written.
    _enable_compilation_cache(config.compilation_cache_dir)
    with console.run_log(workdir, is_primary=is_primary):
        return _train_checked(config, workdir, stop=stop, started=started,
                              warmup_steps=warmup_steps, total_steps=total_steps, latest=latest,
                              encoder=encoder)


def _train_checked(config: Any, workdir: str, *, stop: StopCondition | None, started: float,
                   warmup_steps: int, total_steps: int, latest: int | None,
                   encoder: warm_start.Variables | None) -> step_lib.TrainState:
    """`train` after the checks: builds the run (or finds it finished), then loops."""
    if (grid_warning := diagnostics.feature_grid_warning(config)) is not None:
        logging.warning(grid_warning)
    is_primary = jax.process_index() == 0
    mesh = sharding.make_mesh(config_lib.resolve_mesh_shape(config.mesh, jax.device_count()))
    schedules = step_lib.make_schedules(
        config, total_steps=total_steps, warmup_steps=warmup_steps)
    optimizer = step_lib.make_optimizer(config, schedules)
    finished = _already_finished(config, workdir, latest, total_steps, mesh, optimizer)
    if finished is not None:
        return finished
    if is_primary:
        _write_config(config, workdir)
    checkpointer = ckpt_lib.Checkpointer(
        checkpoint_dir(workdir), keep=config.checkpoint.keep,
        signature=config_lib.model_signature(config))
    state, start, data_start = _init_or_restore(config, mesh, checkpointer, optimizer, encoder)
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
    throughput = console.Throughput(start, total_steps)

    logging.info("Training steps %d..%d (%d of warm-up) on %d device(s) in %d process(es).",
                 start + 1, total_steps, warmup_steps, jax.device_count(), jax.process_count())
    peer_lost = False
    scalars: dict[str, float] = {}
    compile_s = None
    try:
        batch = None
        if start < total_steps:
            with console.phase(_first_batch_text(config)):
                batch = sharding.global_batch(_next_batch(batches), mesh)
            logging.info("Compiling the train step (the first step)...")
        compile_begun = time.perf_counter()
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
            if step == start + 1:
                compile_s = _first_step_done(step_metrics, throughput, step,
                                             since=compile_begun)

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
            logging.info("%s", console.summary(
                workdir=workdir, tensorboard_dir=paths.tensorboard_dir(
                    workdir, config.tensorboard_dir), total_steps=total_steps,
                final_loss=_final_loss(scalars), wall_s=time.perf_counter() - started,
                compile_s=compile_s))
    except Exception as e:
        peer_lost = distributed.lost_peer(e) is not None
        raise
    finally:
        writer.flush()
        writer.close()
        if not peer_lost:  # closing waits for pending saves, i.e. also for the dead peer
            checkpointer.close()
    return state
