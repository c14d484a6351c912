"""What a training run prints and keeps: a quiet console, process 0 only, ``train.log``.

A run logs through absl (``absl.logging``), the command line's and the notebook's alike:

* `quiet_libraries` drops the start-up noise that says nothing about the run: JAX's
  "Unable to initialize backend 'tpu'" on a machine without a TPU (an INFO line), orbax's
  INFO chatter on every save and its warnings about the read-only manager that inspects an
  existing workdir ("read only", "Metadata file does not exist"). Every other warning stays.
* TensorFlow 2.21 prints its C++ start-up lines (oneDNN, CPU features) to stderr before its
  logging is initialised, whatever ``TF_CPP_MIN_LOG_LEVEL`` says: `import_tensorflow` loads
  it with the process's stderr captured and passes on every other line it printed.
* `configure` (called by ``trainer.train``): from plain Python, where no absl handler is
  installed, a stderr handler at INFO in absl's format, so ``train(config, workdir)`` logs
  as the CLI does; an application that configured logging itself keeps its handlers. In a
  multi-process run only process 0 logs INFO; the others log warnings and errors, unless
  absl's ``--verbosity`` is given on the command line (``--verbosity=0``: every process).
* `phase` and `Throughput`: the progress lines of the silent start-up phases, and steps/s
  with an ETA that excludes compilation; `summary`: the end-of-run lines.
* `RunLog`: process 0's log lines, also in ``WORKDIR/train.log`` (a URI too). A local file is
  appended to line by line; an object in a bucket is rewritten from memory at most once a
  minute and when the run ends (a bucket cannot append; a log is a few hundred KB).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import ModuleType

from absl import logging as absl_logging

from detcon_jax import paths

__all__ = ["RunLog", "Throughput", "configure", "duration", "import_tensorflow",
           "native_noise_filtered", "phase", "quiet_libraries", "run_log", "summary"]

LOG_NAME = "train.log"
# Orbax's warnings about a manager opened read-only (to inspect an existing workdir) and about
# checkpoints written without the metadata file: expected, and not about the run.
_ORBAX_NOISE = ("read_only=True", "read only", "Metadata file does not exist")
_REMOTE_FLUSH_S = 60.0


# TensorFlow's start-up lines on stderr (C++, before its logging is initialised).
_NATIVE_NOISE = ("All log messages before absl::InitializeLog() is called",
                 "oneDNN custom operations are on", "cpu_feature_guard.cc",
                 "To enable the following instructions:",
                 # tf.data on a CPU without AVX-512: an "E" line about a fallback that works.
                 "oneDNN supports DT_UINT8 only on platforms with AVX-512")


@contextlib.contextmanager
def native_noise_filtered(noise: tuple[str, ...] = _NATIVE_NOISE) -> Iterator[None]:
    """Captures file descriptor 2 during the block; then writes back the lines without
    ``noise`` (TensorFlow's known C++ noise by default; synchronously: nothing is lost or
    reordered). For blocks that load TensorFlow or build a tf.data pipeline."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(n in line for n in noise))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` without its C++ start-up lines (see the module docstring)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with native_noise_filtered():
        import tensorflow
    return tensorflow


class _LibraryNoise(logging.Filter):
    """Drops the known uninformative records of JAX and orbax (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname:
            if record.levelno < logging.WARNING:
                return False
            if record.levelno == logging.WARNING:
                message = record.getMessage()
                return not any(noise in message for noise in _ORBAX_NOISE)
            return True
        if record.name.startswith("jax._src.xla_bridge") and record.levelno < logging.WARNING:
            return "Unable to initialize backend" not in record.getMessage()
        return True


_NOISE = _LibraryNoise()


def quiet_libraries() -> None:
    """Installs the noise filter on the loggers that emit it (idempotent)."""
    for logger in (absl_logging.get_absl_logger(), logging.getLogger("jax._src.xla_bridge")):
        if _NOISE not in logger.filters:
            logger.addFilter(_NOISE)


def _absl_handler_active() -> bool:
    return absl_logging.get_absl_handler() in logging.root.handlers


class _PlainPythonHandler(logging.StreamHandler):
    """stderr in absl's format, for runs started from Python rather than ``app.run``."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(absl_logging.PythonFormatter())


def _verbosity_given() -> bool:
    """Whether the command line set absl's ``--verbosity`` (``-v``): then every process logs
    at that level (e.g. ``--verbosity=0`` to see each host's progress)."""
    flag_values = absl_logging.flags.FLAGS
    return flag_values.is_parsed() and flag_values["verbosity"].present > 0


def configure(*, is_primary: bool) -> None:
    """Console logging of a run (see the module docstring); safe to call again."""
    quiet_libraries()
    absl_logger = absl_logging.get_absl_logger()
    if not _absl_handler_active() and not logging.root.handlers:
        logging.root.addHandler(_PlainPythonHandler())
    if not is_primary and not _verbosity_given():
        absl_logging.set_verbosity(absl_logging.WARNING)
        absl_logger.setLevel(logging.WARNING)
    elif not _absl_handler_active() and absl_logger.level == logging.NOTSET:
        # Plain Python: absl's logger would inherit the root's WARNING.
        absl_logger.setLevel(logging.INFO)


class RunLog(logging.Handler):
    """Appends the INFO-and-above lines of the run to ``path`` (local or a URI)."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(absl_logging.PythonFormatter())
        self.addFilter(_NOISE)
        self._flush_lock = threading.Lock()
        self._dirty = False
        self._flushed = time.monotonic()
        self._lines: list[str] = []
        self._file = None
        self.path = paths.as_path(path)
        self._remote = paths.is_remote(path)
        if self._remote:
            if self.path.exists():
                self._lines.append(self.path.read_text())
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
                return
            self._lines.append(line)
            self._dirty = True
        except Exception:  # noqa: BLE001 - logging must never end the run
            self.handleError(record)
            return
        if time.monotonic() - self._flushed > _REMOTE_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Writes a remote log's new lines (the whole object: buckets do not append)."""
        with self._flush_lock:
            if self._remote and self._dirty:
                paths.write_text(self.path, "".join(self._lines))
                self._dirty = False
                self._flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


@contextlib.contextmanager
def run_log(workdir: str, *, is_primary: bool) -> Iterator[RunLog | None]:
    """``WORKDIR/train.log`` on process 0 while the block runs (``None`` elsewhere)."""
    if not is_primary:
        yield None
        return
    handler = RunLog(paths.join(workdir, LOG_NAME))
    logging.root.addHandler(handler)
    try:
        yield handler
    finally:
        logging.root.removeHandler(handler)
        handler.close()



def duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative number of seconds."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Logs ``what...`` before a silent start-up phase and its time after it."""
    start = time.perf_counter()
    absl_logging.info("%s...", what)
    yield
    absl_logging.info("%s: done in %.1f s.", what, time.perf_counter() - start)


# The lines of `phase` name its caller, not this module or contextlib.
absl_logging.ABSLLogger.register_frame_to_skip(__file__, "phase")
for _name in ("__enter__", "__exit__"):
    absl_logging.ABSLLogger.register_frame_to_skip(contextlib.__file__, _name)


class Throughput:
    """Steps per second since the previous reading, and the time the rest will take.

    The ETA divides the remaining steps by the mean rate since `started` (called once the
    first, compiling step is done): it excludes compilation, and a mean over every step
    since then is steadier than one window's rate (it includes the checkpoint saves, which
    the remaining steps will have too).
    """

    def __init__(self, step: int, total: int) -> None:
        self._step, self._time, self._total = step, time.perf_counter(), total
        self._origin: tuple[int, float] | None = None

    def started(self, step: int) -> None:
        """``step`` (the first of this process, which compiles) is done: the ETA and the
        windows after it are timed from now."""
        self._origin = (step, time.perf_counter())

    def read(self, step: int) -> tuple[float, str]:
        """(steps/s since the previous reading, or since `started` when that is later; ETA
        as ``H:MM:SS``, ``-:--:--`` until a step after `started` is timed)."""
        now = time.perf_counter()
        first, since = self._step, self._time
        if self._origin is not None and step > self._origin[0] and self._origin[1] > since:
            first, since = self._origin  # the window without the compiling step
        steps_per_s = (step - first) / max(now - since, 1e-9)
        self._step, self._time = step, now
        if self._origin is None or step <= self._origin[0]:
            return steps_per_s, "-:--:--"
        mean_rate = (step - self._origin[0]) / max(now - self._origin[1], 1e-9)
        return steps_per_s, duration((self._total - step) / mean_rate)


def summary(*, workdir: str, tensorboard_dir: str, total_steps: int, final_loss: float | None,
            wall_s: float, compile_s: float | None) -> str:
    """The end-of-run lines: final loss, time, and the commands to look at the result."""
    loss = "n/a" if final_loss is None else f"{final_loss:.4f}"
    compile_part = "" if compile_s is None else f", of which {compile_s:.0f} s compiling"
    return "\n".join([
        f"Training finished at step {total_steps}: final loss {loss} (mean over the last log "
        f"window); {duration(wall_s)} in this process{compile_part}.",
        f"  TensorBoard:  tensorboard --logdir={tensorboard_dir}",
        f"  Linear probe: python -m detcon_jax.evaluate.linear --checkpoint={workdir} "
        "--data=CIFAR10_DIR",
        f"  k-NN:         python -m detcon_jax.evaluate.knn --checkpoint={workdir} "
        "--data=CIFAR10_DIR",
        f"  Segmentation: python -m detcon_jax.evaluate.segmentation --mode=probe "
        f"--checkpoint={workdir} --data=CAMVID_DIR",
    ])
