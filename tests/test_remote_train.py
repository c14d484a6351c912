"""Training with ``--workdir=gs://...`` against a GCS-protocol server on 127.0.0.1.

The checkpoints, ``config.json`` and ``metrics.jsonl`` go to the emulator's bucket
(tests/gcs_emulator.py points orbax/tensorstore and etils.epath/gcsfs at it). A run is
SIGKILLed while the emulator holds a checkpoint step without its commit file, rerun, and
ends with the parameters of a local run that was never interrupted; an evaluator loads
the encoder from the bucket. TensorBoard
events go through TensorFlow's own GCS client, which cannot be pointed at an emulator: the
run writes them to a local folder (``tensorboard_dir``); that layer is tested on TF's
``ram://`` file system in tests/test_remote_paths.py. A bucket that does not exist is one
line and exit status 2 (also there).
"""

import json
import os
import signal
import subprocess
import sys
import uuid

import jax
import numpy as np
import pytest
from cli_helpers import (
    REPO,
    SMOKE,
    Training,
    assert_same_state,
    load_state,
    run_cli,
    subprocess_env,
    train_command,
)
from etils import epath
from gcs_emulator import reset_path_caches

from detcon_jax import checkpoint
from detcon_jax.evaluate import features

STEPS, EVERY = 8, 2
COMMIT_FILE = "commit_success.txt"  # orbax's mark of a complete step on an object store


def _overrides(tmp_path) -> dict[str, object]:
    return {"num_steps": STEPS, "checkpoint.every_steps": EVERY, "checkpoint.keep": 10,
            "tensorboard_dir": str(tmp_path / "tensorboard")}


def _logged_steps(text: str) -> list[int]:
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _steps_in_bucket(gcs, prefix: str) -> dict[int, bool]:
    """Step -> whether committed, for every step with an object under ``prefix``."""
    steps: dict[int, bool] = {}
    for name in gcs.object_names(prefix):
        step, _, rest = name[len(prefix):].partition("/")
        if step.isdigit():
            steps[int(step)] = steps.get(int(step), False) or rest == COMMIT_FILE
    return steps


def _save_in_progress(gcs, prefix: str) -> bool:
    """A step being written (objects, no commit file) after a complete one."""
    steps = _steps_in_bucket(gcs, prefix)
    return any(steps.values()) and not all(steps.values())


@pytest.mark.slow
def test_a_bucket_workdir_killed_during_a_save_and_resumed_equals_a_local_run(gcs, tmp_path):
    flags = [f"--config.{k}={v}" for k, v in _overrides(tmp_path).items()]
    local = tmp_path / "local"
    proc = run_cli(local, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_prefix = f"{uuid.uuid4().hex[:12]}/run"
    workdir = f"gs://{gcs.bucket}/{run_prefix}"
    checkpoints = f"{run_prefix}/checkpoints/"
    # SIGKILL as soon as the emulator holds a step without its commit file after a complete
    # step; a save can finish between the poll and the kill, so up to three runs.
    killed_during_save = newest = 0
    for _ in range(3):
        run = Training(workdir, *flags)
        if not run.wait_for(lambda: _save_in_progress(gcs, checkpoints), poll=0.02):
            break  # the run ended first: every save was missed
        run.finish(signal.SIGKILL)
        steps = _steps_in_bucket(gcs, checkpoints)
        if newest:
            assert f"at step {newest}." in run.output(), run.output()[-3000:]
        newest = max(s for s, committed in steps.items() if committed)
        if not all(steps.values()):
            killed_during_save += 1
            break
    assert killed_during_save, "no kill landed during a checkpoint save"
    reset_path_caches()  # gcsfs caches listings: this process listed the bucket before
    assert checkpoint.complete_steps(f"{workdir}/checkpoints")[-1] == newest

    resumed = subprocess.run(
        train_command(workdir, *flags), cwd=tmp_path, env=subprocess_env(),
        capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reset_path_caches()
    assert f"at step {newest}." in resumed.stderr, resumed.stderr[-3000:]
    assert checkpoint.complete_steps(f"{workdir}/checkpoints")[-1] == STEPS
    assert all(_steps_in_bucket(gcs, checkpoints).values())  # the partial step redone
    assert_same_state(load_state(f"{workdir}/checkpoints/{STEPS}"),
                      load_state(local / "checkpoints" / str(STEPS)))
    remote_metrics = (epath.Path(workdir) / "metrics.jsonl").read_text()
    # Every logged step once, the same steps as the uninterrupted run.
    assert _logged_steps(remote_metrics) == _logged_steps((local / "metrics.jsonl").read_text())
    assert (epath.Path(workdir) / "config.json").exists()
    # An evaluator's encoder, read from the bucket, is the local run's.
    remote_backbone, info = features.load_backbone(workdir)
    assert info["kind"] == "orbax" and info["step"] == STEPS, info
    local_backbone, _ = features.load_backbone(str(local))
    assert_same_state(_leaves(remote_backbone.variables), _leaves(local_backbone.variables))
    # Nothing of the bucket run landed in a local ``gs:`` folder.
    assert not (tmp_path / "gs:").exists() and not (REPO / "gs:").exists()
    assert sorted(os.listdir(tmp_path)) == ["local", "tensorboard"]


@pytest.mark.slow
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
