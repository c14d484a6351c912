"""``trainer.train`` called from Python, as from a notebook: no flags, no CLI.

A plain ``python -c`` session (started in another directory) loads ``experiments/smoke.py``,
trains it with ``cli_helpers.STEPS`` steps (the train tests' compiled program), stopped
after step 6 by its own stop condition, then calls ``train`` again, which resumes there and
runs to the end. Both calls return the state at the step they ended on; the workdir holds
the cadence's checkpoints plus the stop's, ``config.json`` and ``metrics.jsonl`` with every
step exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cli_helpers import EVERY, SMOKE, STEPS, checkpoint_steps, metrics_steps, subprocess_env

STOP = 6  # between two cadence checkpoints


def test_train_from_a_plain_python_session_stops_and_resumes(tmp_path):
    workdir = tmp_path / "notebook"
    code = textwrap.dedent(f"""
        import runpy

        from absl import logging

        from detcon_jax import trainer

        logging.set_verbosity(logging.INFO)  # progress lines, as a notebook user would

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
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"stopped at {STOP}\nfinished at {STEPS}\n" in proc.stdout, proc.stdout
    assert f"at step {STOP}." in proc.stderr, proc.stderr[-4000:]  # the second call resumed
    assert checkpoint_steps(workdir / "checkpoints") == sorted(
        {STOP, *range(EVERY, STEPS + 1, EVERY)})
    assert metrics_steps(workdir) == list(range(1, STEPS + 1))
    assert (workdir / "config.json").is_file()
