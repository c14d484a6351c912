"""Preemption of a two-process training job (jax.distributed on 127.0.0.1, one device each).

A SIGTERM to one of the processes stops both after the same step (JAX's preemption sync
point), which is checkpointed, and both exit 0; then a resumed two-process run, SIGTERM to
both, stops both at one later step.
"""

from __future__ import annotations

import pathlib
import re
import signal

import pytest
from cli_helpers import (
    Training,
    checkpoint_steps,
    free_port,
    subprocess_env,
)


def _two_hosts(workdir: pathlib.Path, *flags: str) -> list[Training]:
    port = free_port()
    return [
        # --verbosity=0: process 1 logs its steps too (by default only process 0 does).
        Training(workdir, "--distributed", "--verbosity=0", *flags, env=subprocess_env(
            1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", DETCON_NUM_PROCESSES="2",
            DETCON_PROCESS_ID=str(i)))
        for i in range(2)
    ]


def _stop_steps(runs: list[Training]) -> list[int]:
    steps = []
    for run in runs:
        match = re.search(r"Stopping at step (\d+)", run.output())
        assert match, run.output()[-4000:]
        steps.append(int(match.group(1)))
    return steps


def _sigterm_two_hosts(workdir, flags, *, after_step: int, hosts: tuple[int, ...]):
    """Two hosts train until both are past ``after_step``; then ``hosts`` get SIGTERM.
    Returns the runs and their exit codes (a host left running is killed)."""
    runs = _two_hosts(workdir, *flags)
    try:
        for run in runs:
            assert run.wait_for(lambda r=run: r.last_step() > after_step), run.output()[-4000:]
        for host in hosts:
            runs[host].proc.send_signal(signal.SIGTERM)
        codes = [run.finish() for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
    return runs, codes


@pytest.mark.slow
@pytest.mark.multiprocess
def test_multihost_sigterm_every_host_stops_at_the_same_step(tmp_path):
    workdir = tmp_path / "pod"
    flags = ("--config.num_steps=1000", "--config.checkpoint.every_steps=1000")
    # A preemption notice reaches one host only.
    runs, codes = _sigterm_two_hosts(workdir, flags, after_step=1, hosts=(1,))
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    first, second = _stop_steps(runs)
    assert first == second >= 2
    assert checkpoint_steps(workdir / "checkpoints") == [first]

    # Resume on both hosts, then SIGTERM both (what a scheduler sends to a whole job).
    runs, codes = _sigterm_two_hosts(workdir, flags, after_step=first + 1, hosts=(0, 1))
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    assert all(f"at step {first}." in run.output() for run in runs)
    stop_a, stop_b = _stop_steps(runs)
    assert stop_a == stop_b > first
    assert checkpoint_steps(workdir / "checkpoints") == [first, stop_a]
