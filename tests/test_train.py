"""The training CLI end to end on the smoke config (subprocesses, 1 CPU device).

- A fresh run writes checkpoints on the cadence, TensorBoard events and ``metrics.jsonl``.
- Stop and resume: the uninterrupted 4-step run vs. the same run stopped after its step-2
  checkpoint (step-4 checkpoint and later metrics removed, as after a crash) and resumed
  to step 4: the final states must be equal (same data position, same rngs), to
  ``|a - b| <= 1e-6 + 1e-5 |b|`` (the computation is the same program on the same data;
  only thread scheduling can reorder float sums).
- Bad configs and flags exit with status 2 and one line naming the key, writing nothing;
  so does a workdir holding another model's checkpoint.
- SIGTERM checkpoints at the current step and exits 0.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.py")


def _env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR",
                   os.path.join(tempfile.gettempdir(), "detcon_jax_test_cache"))
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _cli(workdir: pathlib.Path, *flags: str, devices: int | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}",
           f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def _load_state(step_dir: pathlib.Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(step_dir / "state")
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _steps(ckpt_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted smoke run (4 steps, checkpoints every 2, keep 2)."""
    workdir = tmp_path_factory.mktemp("full")
    proc = _cli(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_cli_writes_checkpoints_tensorboard_and_metrics(full_run):
    assert _steps(full_run / "checkpoints") == [2, 4]
    events = list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    lines = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        for key in ("loss", "repr_loss", "lr", "tau", "images_per_s", "steps_per_s",
                    "proj_std", "pred_std", "classif_loss", "top1_accuracy"):
            assert key in line and np.isfinite(line[key]), (key, line)
    meta = json.loads((full_run / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["step"] == 4 and meta["data_position"] == 4
    assert meta["signature"]["method"] == "detcon_b"


def test_stop_and_resume_equals_uninterrupted(full_run, tmp_path):
    workdir = tmp_path / "resumed"
    workdir.mkdir()
    shutil.copytree(full_run / "checkpoints", workdir / "checkpoints")
    shutil.copy(full_run / "metrics.jsonl", workdir / "metrics.jsonl")
    # As if the run died right after its step-2 checkpoint.
    shutil.rmtree(workdir / "checkpoints" / "4")
    proc = _cli(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Resumed from" in proc.stderr and "at step 2" in proc.stderr
    assert _steps(workdir / "checkpoints") == [2, 4]
    got = _load_state(workdir / "checkpoints" / "4")
    want = _load_state(full_run / "checkpoints" / "4")
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]


@pytest.mark.parametrize("flags, devices, key", [
    (("--config.model.dpeth=3",), None, "dpeth"),
    (("--config.batch_size=12",), 8, "batch_size"),
    (("--config.data.path=/nonexistent/detcon/data",), None, "data.path"),
    (("--config.masks.source=none",), None, "masks.source"),
    (("--config.batch_size=abc",), None, "batch_size"),
])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, flags, devices, key):
    workdir = tmp_path / "never"
    proc = _cli(workdir, *flags, devices=devices)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and key in error_lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_workdir_of_another_model_exits_2(full_run):
    before = sorted(str(p) for p in full_run.rglob("*"))
    proc = _cli(full_run, "--config.model.projection_size=16")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another model" in proc.stderr and str(full_run) in proc.stderr
    assert sorted(str(p) for p in full_run.rglob("*")) == before


def test_sigterm_checkpoints_current_step_and_exits_0(tmp_path):
    workdir = tmp_path / "preempted"
    # Many steps so that SIGTERM arrives mid-training; checkpoints only at the very end.
    proc = subprocess.Popen(
        [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}", f"--workdir={workdir}",
         "--config.num_steps=100000", "--config.checkpoint.every_steps=100000"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        metrics = workdir / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    steps = _steps(workdir / "checkpoints")
    assert len(steps) == 1 and 3 <= steps[0] < 100000, steps
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == steps[0]


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(full_run, tmp_path):
    workdir = tmp_path / "nan"
    workdir.mkdir()
    shutil.copytree(full_run / "checkpoints", workdir / "checkpoints")
    shutil.rmtree(workdir / "checkpoints" / "4")
    # A temperature that underflows float32 turns every logit into inf, the loss into NaN.
    proc = _cli(workdir, "--config.loss.temperature=1e-45")
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "non-finite loss at step 3" in proc.stderr, proc.stderr[-4000:]
    assert _steps(workdir / "checkpoints") == [2]
    got = _load_state(workdir / "checkpoints" / "2")
    want = _load_state(full_run / "checkpoints" / "2")
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
