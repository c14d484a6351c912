"""The multi-process runtime: starting it, and ending a process whose peer is gone.

A multi-process run is one JAX distributed job: process 0 hosts JAX's coordination
service, every process sends it heartbeats, and each step's collectives connect every
process with the others. When one process dies (SIGKILL, OOM killer, lost host), the
others learn it in one of three ways:

- a collective they are in (or enter next) fails: on CPU, gloo sees the dead process's
  sockets close at once. That is a Python exception; `exit_if_lost_peer` turns it into
  one line ``error: lost peer process N (...)`` and exit status `EXIT_LOST_PEER`, at
  once: the normal exit would first wait for pending checkpoint saves and then in JAX's
  shutdown barrier, both of which wait for the dead peer;
- process 0 is the one lost: the coordination service dies with it, and JAX itself ends
  every other process at once (it aborts with its own message, "Terminating process
  because the JAX distributed service detected fatal errors ... another task died");
- nothing fails but nothing moves (a collective waiting for a host that vanished without
  closing its connections, as accelerator collectives do): the service misses the peer's
  heartbeats for ``heartbeat_timeout_s`` seconds and JAX ends every process the same way.

JAX's abort can't be reworded from Python (its callback receives a status jaxlib cannot
pass to Python), so only the first way prints our one line.
"""

from __future__ import annotations

import os
import re
import sys

import jax

# Seconds without a heartbeat after which the coordination service declares a process
# dead and ends the job. JAX's default is 100 s; 60 s bounds a hung job to about a minute
# and is still far above heartbeat jitter (heartbeats come from a native thread, so long
# compiles or Python work do not delay them).
HEARTBEAT_TIMEOUT_S = 60
EXIT_LOST_PEER = 4

# What the failed call says when a peer is gone (gloo's socket errors, the coordination
# service's verdicts), and how the one-line message names the cause.
_LOST_PEER_CAUSES = (
    (r"Connection reset by peer", "connection reset"),
    (r"Connection closed by peer", "connection closed"),
    (r"Connection refused", "connection refused"),
    (r"Broken pipe", "broken pipe"),
    (r"heartbeat", "heartbeat timeout"),
    (r"coordination service", "coordination service unreachable"),
)


def maybe_initialize(*, requested: bool, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> bool:
    """Starts JAX's distributed runtime when ``requested`` or ``DETCON_NUM_PROCESSES`` is set.

    ``DETCON_NUM_PROCESSES``/``DETCON_PROCESS_ID`` give the process count and index where
    no JAX cluster detector applies (see launch/README.md); unset, JAX detects them.
    Returns whether the runtime was started.
    """
    num = os.environ.get("DETCON_NUM_PROCESSES")
    if not (requested or num):
        return False
    pid = os.environ.get("DETCON_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=int(num) if num else None, process_id=int(pid) if pid else None,
        heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True


def describe_lost_peer(text: str, *, process_index: int, process_count: int) -> str | None:
    """One line naming the lost peer when an error's ``text`` says a peer is gone, else None.

    ``text`` is what a failed collective or coordination call raised in process
    ``process_index`` of ``process_count``.
    """
    if process_count == 1:
        return None
    cause = next((c for pattern, c in _LOST_PEER_CAUSES if re.search(pattern, text)), None)
    if cause is None:
        return None
    # A failed collective names the peer's address, not its index; of two, it is the other.
    if process_count == 2:
        who = f"peer process {1 - process_index}"
    else:
        who = f"a peer process of {process_count}"
    detail = " ".join(text.split())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return (f"lost {who} ({cause}: {detail}); process {process_index} stops with status "
            f"{EXIT_LOST_PEER}. Restart every process with the same --workdir to resume from "
            "the newest complete checkpoint")


def lost_peer(error: BaseException) -> str | None:
    """`describe_lost_peer` of a JAX runtime error raised in this process; None otherwise."""
    if not isinstance(error, jax.errors.JaxRuntimeError):
        return None
    return describe_lost_peer(str(error), process_index=jax.process_index(),
                              process_count=jax.process_count())


def exit_if_lost_peer(error: BaseException) -> None:
    """Ends the process with `EXIT_LOST_PEER` and one line on stderr if ``error`` is a lost
    peer (see `lost_peer`); returns otherwise.

    ``os._exit``: a normal exit would wait for pending checkpoint saves and then in
    ``jax.distributed.shutdown``'s barrier, both of which wait for the dead peer until the
    coordination service gives up on it and aborts this process.
    """
    message = lost_peer(error)
    if message is None:
        return
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_LOST_PEER)
