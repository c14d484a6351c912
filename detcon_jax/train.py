"""Command-line entry point for pre-training: config + workdir in, checkpoints + metrics out.

    python -m detcon_jax.train --config=experiments/smoke.py --workdir=/tmp/detcon_smoke \
        [--config.batch_size=16 ...] [--distributed]

Thin on purpose: flags, one-line errors and exit codes, the SIGTERM watcher and the
distributed runtime; `detcon_jax.trainer.train` does the work (and is the entry point from
Python).

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

import signal
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from detcon_jax import config as config_lib
from detcon_jax import configs, console, distributed

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
        return configs.parse_flags(argv)
    except config_lib.ConfigError as e:
        _error_exit(str(e))
        raise  # unreachable


def _maybe_initialize_distributed() -> None:
    distributed.maybe_initialize(requested=_DISTRIBUTED.value,
                                 heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)


class StopRequest:
    """Turns SIGTERM into a request to checkpoint and exit at a step boundary.

    A `detcon_jax.trainer.StopCondition`; make it after ``jax.distributed.initialize``.

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
        if self._sync_point:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        signalled = multihost_utils.process_allgather(np.int32(self.signalled))
        return bool(np.any(signalled))


def main(argv: list[str]) -> None:
    """Trains ``--config`` in ``--workdir``; exits 0, or with one line and a status above."""
    if len(argv) > 1:
        _error_exit(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        _error_exit("--config is required (e.g. --config=experiments/smoke.py)")
    if not _WORKDIR.value:
        _error_exit("--workdir is required")
    console.quiet_libraries()
    try:
        # Before the distributed runtime starts and before the trainer's libraries (flax,
        # orbax, TensorFlow) load, so that a bad flag fails within a second or two.
        config_lib.validate(_CONFIG.value)
    except config_lib.ConfigError as e:
        _error_exit(str(e))
    _maybe_initialize_distributed()
    stop = StopRequest()  # first thing: a SIGTERM during start-up is not lost

    console.import_tensorflow()  # before the trainer loads it: without its start-up lines
    from detcon_jax import trainer

    try:
        trainer.train(_CONFIG.value, _WORKDIR.value, stop=stop)
    except config_lib.ConfigError as e:
        _error_exit(str(e))
    except trainer.NonFiniteError as e:
        logging.error("%s; the newest checkpoint is intact.", e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_NON_FINITE)
    except trainer.DataError as e:
        print(f"error: data: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DATA_ERROR)
    except Exception as e:
        distributed.exit_if_lost_peer(e)
        raise
    sys.exit(0)


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
