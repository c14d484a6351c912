"""Resume and preemption of the training CLI (smoke config, subprocesses, 1 CPU device).

Every run passes ``cli_helpers.RUN`` or its ``num_steps`` (one compiled program for all
train tests, see ``cli_helpers``).

- SIGKILL five times in a row at seeded random points, at least once while a checkpoint
  is being written, then a resume to the end: every start resumes from the newest
  complete checkpoint (never a temporary one), loses at most one checkpoint interval
  (plus the steps of a save still in flight when killed), and the final state equals the
  uninterrupted run's to ``|a - b| <= STATE_TOL (|b| + m)`` (``m``: the largest value of
  its part of the state; same program on the same data, only thread scheduling can reorder
  float sums, so the float32 error scale of a step, ``cli_helpers.STATE_TOL``).
  ``metrics.jsonl`` ends up holding each
  step exactly once.
- SIGTERM checkpoints at the current step and exits 0.
"""

from __future__ import annotations

import pathlib
import signal
import time

import numpy as np
import pytest
from cli_helpers import (
    EVERY,
    RUN,
    STEPS,
    Training,
    assert_same_state,
    checkpoint_steps,
    load_state,
    metrics_steps,
    run_cli,
)


def _temporary_checkpoints(ckpt_dir: pathlib.Path) -> list[str]:
    if not ckpt_dir.is_dir():
        return []
    return [p.name for p in ckpt_dir.iterdir() if not p.name.isdigit()]


@pytest.mark.slow
def test_sigkill_five_times_then_resume_equals_uninterrupted(full_run, tmp_path):
    workdir = tmp_path / "killed"
    ckpt_dir = workdir / "checkpoints"
    rng = np.random.default_rng(2024)
    # Kill points: once during start-up, twice while a checkpoint is being written, twice
    # at a random time after training has started.
    modes = ["startup", "save", "running", "save", "running"]
    saw_partial = 0
    for mode in modes:
        newest_before = (checkpoint_steps(ckpt_dir) or [0])[-1]
        run = Training(workdir, *RUN)
        if mode == "startup":
            time.sleep(rng.uniform(1.0, 5.0))
        elif mode == "save":
            # Orbax writes a step into a temporary directory and renames it when complete.
            # Kill during the second save of this run, so that the first one completes.
            run.wait_for(lambda after=newest_before + EVERY: any(
                name.split(".")[0].isdigit() and int(name.split(".")[0]) > after
                for name in _temporary_checkpoints(ckpt_dir)))
        else:
            target = newest_before + int(rng.integers(1, 2 * EVERY))
            run.wait_for(lambda r=run, after=target: r.last_step() >= after)
            time.sleep(rng.uniform(0.0, 0.25))
        assert run.proc.poll() is None, f"run finished before the {mode} kill"
        reached = run.last_step()
        run.finish(signal.SIGKILL)
        log = run.output()
        if newest_before and mode != "startup":
            # It resumed from the newest complete checkpoint there was.
            assert f"at step {newest_before}." in log, log[-3000:]
        complete = checkpoint_steps(ckpt_dir)
        partial = _temporary_checkpoints(ckpt_dir)
        saw_partial += bool(partial)
        newest = (complete or [0])[-1]
        print(f"{mode} kill: resumed at {newest_before}, reached {reached}, complete "
              f"{complete}, partial {partial}")
        # At most one interval lost, plus the save that may still have been in flight.
        assert newest >= reached // EVERY * EVERY - EVERY, (mode, reached, complete)
        for step in complete:  # every complete checkpoint is loadable
            assert (ckpt_dir / str(step) / "state").is_dir()
    assert saw_partial >= 1, "no kill landed during a checkpoint save"

    newest = checkpoint_steps(ckpt_dir)[-1]
    proc = run_cli(workdir, *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"at step {newest}." in proc.stderr
    got = load_state(ckpt_dir / str(STEPS))
    assert_same_state(got, load_state(full_run / "checkpoints" / str(STEPS)))
    assert metrics_steps(workdir) == list(range(1, STEPS + 1))


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_sigterm_checkpoints_current_step_and_exits_0(tmp_path):
    workdir = tmp_path / "preempted"
    # Checkpoints only at the very end: the one written is the preemption checkpoint.
    run = Training(workdir, f"--config.num_steps={STEPS}", "--config.checkpoint.every_steps=1000")
    assert run.wait_for(lambda: run.last_step() >= 2), run.output()[-3000:]
    code = run.finish(signal.SIGTERM)
    assert code == 0, run.output()[-4000:]
    steps = checkpoint_steps(workdir / "checkpoints")
    assert len(steps) == 1 and 2 <= steps[0] < STEPS, steps
    assert f"Stopping at step {steps[0]}" in run.output()
    assert metrics_steps(workdir)[-1] == steps[0]
