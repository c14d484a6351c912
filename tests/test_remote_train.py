"""Training with ``--workdir=gs://...`` against a GCS-protocol server on 127.0.0.1.

The checkpoints, ``config.json`` and ``metrics.jsonl`` go to the emulator's bucket
(tests/gcs_emulator.py points orbax/tensorstore and etils.epath/gcsfs at it). TensorBoard
events go through TensorFlow's own GCS client, which cannot be pointed at an emulator: the
run writes them to a local folder (``tensorboard_dir``); that layer is tested on TF's
``ram://`` file system in tests/test_remote_paths.py. A bucket that does not exist is one
line and exit status 2 (also there).
"""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from cli_helpers import REPO, SMOKE, assert_same_state, load_state, run_cli, subprocess_env
from etils import epath
from gcs_emulator import reset_path_caches

from detcon_jax import checkpoint

STEPS, EVERY = 8, 4

# The first run stops after step EVERY through the trainer's stop condition (the same
# injection point the CLI's SIGTERM watcher uses), so the resume point is deterministic.
_STOPPED_RUN = textwrap.dedent("""
    import json
    import sys
    from detcon_jax import configs, trainer

    class StopAt:
        def should_stop(self, step):
            return step == int(sys.argv[3])

    config = configs.load(sys.argv[1], json.loads(sys.argv[4]))
    trainer.train(config, sys.argv[2], stop=StopAt())
""")


def _overrides(tmp_path) -> dict[str, object]:
    return {"num_steps": STEPS, "checkpoint.every_steps": EVERY, "checkpoint.keep": 10,
            "tensorboard_dir": str(tmp_path / "tensorboard")}


def _logged_steps(text: str) -> list[int]:
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_bucket_workdir_stopped_and_resumed_equals_a_local_run(gcs, tmp_path):
    overrides = _overrides(tmp_path)
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    local = tmp_path / "local"
    proc = run_cli(local, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]

    workdir = f"gs://{gcs.bucket}/{uuid.uuid4().hex[:12]}/run"
    stopped = subprocess.run(
        [sys.executable, "-c", _STOPPED_RUN, str(SMOKE), workdir, str(EVERY),
         json.dumps(overrides)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert checkpoint.complete_steps(f"{workdir}/checkpoints") == [EVERY]
    resumed = subprocess.run(
        [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}", f"--workdir={workdir}",
         *flags], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
        timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reset_path_caches()  # gcsfs caches listings: this process listed the bucket before
    assert f"at step {EVERY}" in resumed.stderr, resumed.stderr[-3000:]

    assert checkpoint.complete_steps(f"{workdir}/checkpoints") == [EVERY, STEPS]
    assert_same_state(load_state(f"{workdir}/checkpoints/{STEPS}"),
                      load_state(local / "checkpoints" / str(STEPS)))
    remote_metrics = (epath.Path(workdir) / "metrics.jsonl").read_text()
    local_metrics = (local / "metrics.jsonl").read_text()
    # Every logged step once, the same steps as the uninterrupted run.
    assert _logged_steps(remote_metrics) == _logged_steps(local_metrics)
    assert (epath.Path(workdir) / "config.json").exists()
    # Nothing of the bucket run landed in a local ``gs:`` folder.
    assert not (tmp_path / "gs:").exists() and not (REPO / "gs:").exists()
    assert sorted(os.listdir(tmp_path)) == ["local", "tensorboard"]


def test_train_with_a_missing_bucket_is_one_line_and_exit_2(gcs, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}",
         "--workdir=gs://no-such-bucket/x"], cwd=tmp_path, env=subprocess_env(),
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gs://no-such-bucket" in errors[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == []
    assert not gcs.bucket_exists("no-such-bucket")
