"""``trainer.train`` called from Python, as from a notebook: no flags, no CLI.

A plain ``python -c`` session (started in another directory) loads ``experiments/smoke.py``,
trains it with ``cli_helpers.STEPS`` steps (the train tests' compiled program), stopped
after step 6 by its own stop condition, then calls ``train`` again, which resumes there and
runs to the end; a third call finds the run finished (without building the input pipeline).
Every call returns the state at the step it ended on and logs, without any logging set-up,
the lines the CLI shows, also into ``train.log``; the workdir holds the cadence's checkpoints
plus the stop's, ``config.json`` and ``metrics.jsonl`` with every step exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from cli_helpers import EVERY, SMOKE, STEPS, checkpoint_steps, metrics_steps, subprocess_env

STOP = 6  # between two cadence checkpoints


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_train_from_a_plain_python_session_stops_and_resumes(tmp_path):
    workdir = tmp_path / "notebook"
    code = textwrap.dedent(f"""
        import runpy

        from detcon_jax import trainer

        config = runpy.run_path({SMOKE!r})["get_config"]()
        config.num_steps = {STEPS}
        config.checkpoint.every_steps = {EVERY}
        config.checkpoint.keep = 100

        class StopAt:
            def should_stop(self, step):
                return step == {STOP}

        state = trainer.train(config, {str(workdir)!r}, stop=StopAt())
        print("stopped at", int(state.step))
        state = trainer.train(config, {str(workdir)!r})
        print("finished at", int(state.step))
        state = trainer.train(config, {str(workdir)!r})
        print("again at", int(state.step))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"stopped at {STOP}\nfinished at {STEPS}\nagain at {STEPS}\n" in proc.stdout
    # Without any logging set-up, the progress lines of the CLI (absl's INFO on stderr).
    log = proc.stderr
    assert f"at step {STOP}." in log, log[-4000:]  # the second call resumed
    assert f"step {STEPS}/{STEPS}  loss " in log and "Training finished at step" in log
    # The third call finds the run finished and builds no input pipeline.
    assert f"already finished at step {STEPS} (of {STEPS})" in log, log[-4000:]
    assert log.count("Building the input pipeline") == 2, log[-4000:]
    # train.log holds the same lines.
    train_log = (workdir / "train.log").read_text()
    assert f"step {STEPS}/{STEPS}  loss " in train_log and "already finished" in train_log
    assert checkpoint_steps(workdir / "checkpoints") == sorted(
        {STOP, *range(EVERY, STEPS + 1, EVERY)})
    assert metrics_steps(workdir) == list(range(1, STEPS + 1))
    assert (workdir / "config.json").is_file()
