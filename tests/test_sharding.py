"""Sharded training equals single-device training: 8 fake devices, and 2 processes.

Each run is a fresh process (``tests/train_driver.py``): the device count is fixed when
JAX starts. All runs train the smoke model for 3 steps (96 px, so that the 3x3 feature grid
holds several mask ids) on the same global batches, and must agree with the 1-device run to
the float32 error scale of the computation (tests/tolerances.py; the sharded programs sum in
another order): the longest sums are the BatchNorms' over 8 images x 48 x 48 = 18432
positions, a value passes ~16 layers, so the losses to ``LOSS_TOL`` relative and every float
leaf of the final state (online/target parameters, batch statistics, LARS momentum) to
``|a - b| <= STATE_TOL (|b| + m)``, ``m`` the largest value of its part of the state
(forward and backward; `tolerances.assert_leaves_close`), integer leaves exactly.
A gradient scaled by the device count (the pmap-era ``pmean`` mistake under ``shard_map``) moves the
un-adapted BatchNorm/bias updates by ~7x their size and fails this by orders of magnitude.

The mesh comes from ``jax.make_mesh`` (topology-aware device order on TPU slices) with
``Auto`` axes, and a ``mesh`` config with an axis the step does not shard over is a
``ConfigError`` naming ``mesh`` (it would otherwise replicate the work on that axis).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from cli_helpers import free_port, subprocess_env
from conftest import smoke_config
from jax.sharding import AxisType
from ml_collections import config_dict
from tolerances import assert_leaves_close, f32_tolerance

from detcon_jax import config as config_lib
from detcon_jax import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "train_driver.py"
STEPS = 3
LOSS_TOL = f32_tolerance(18432, depth=16)
STATE_TOL = f32_tolerance(18432, depth=32)


def _run_driver(out: pathlib.Path, *, devices: int | None = None, extra: tuple = ()) -> None:
    cmd = [sys.executable, str(DRIVER), f"--out={out}", f"--steps={STEPS}", *extra]
    proc = subprocess.run(cmd, env=subprocess_env(devices), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _assert_same_run(result: pathlib.Path, reference: pathlib.Path) -> None:
    got, want = np.load(result), np.load(reference)
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=LOSS_TOL)
    assert sorted(got.files) == sorted(want.files)
    leaves = [k for k in want.files if k != "losses"]
    assert_leaves_close({k: got[k] for k in leaves}, {k: want[k] for k in leaves}, STATE_TOL)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("single") / "run.npz"
    _run_driver(out, devices=1)
    losses = np.load(out)["losses"]
    assert losses.shape == (STEPS,) and np.all(np.isfinite(losses))
    return out


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("eight") / "run.npz"
    _run_driver(out, devices=8)
    return out


@pytest.mark.slow
def test_eight_devices_match_one_device(single_device_run, eight_device_run):
    _assert_same_run(eight_device_run, single_device_run)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(single_device_run, tmp_path):
    port = free_port()
    out = tmp_path / "two.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), f"--out={out}", f"--steps={STEPS}",
             "--num_processes=2", f"--process_id={i}", f"--port={port}"],
            env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]
    assert "devices=2" in logs[0] and "devices=2" in logs[1]
    _assert_same_run(out, single_device_run)


def test_mesh_is_built_by_jax_make_mesh_with_auto_axes(monkeypatch):
    calls = []
    real = jax.make_mesh

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(jax, "make_mesh", spy)
    devices = jax.devices()[:1]
    mesh = sharding.make_mesh({sharding.DATA_AXIS: 1}, devices=devices)
    assert len(calls) == 1
    assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.shape[sharding.DATA_AXIS] == 1
    assert mesh.axis_types == (AxisType.Auto,)
    assert list(mesh.devices.flat) == devices
    # jax.make_mesh alone would quietly build a smaller mesh from the first devices.
    with pytest.raises(ValueError, match="do not match"):
        sharding.make_mesh({sharding.DATA_AXIS: 1}, devices=[])


@pytest.mark.parametrize("axes", [{"data": -1, "model": 1}, {"model": -1}, {}])
def test_mesh_config_with_axes_the_step_does_not_use_is_a_config_error(axes):
    config = smoke_config()
    config.mesh = config_dict.ConfigDict(axes)
    with pytest.raises(config_lib.ConfigError, match="'mesh'"):
        config_lib.validate(config)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_pod_layout_through_local_sh_matches_eight_devices(eight_device_run, tmp_path):
    # 2 processes x 4 devices, started as launch/local.sh starts them (coordinator, process
    # ids and device count from its environment). Its --python stands in for the
    # interpreter and runs the driver instead of the train CLI: the CLI's per-host input
    # pipelines give another process layout other data, the driver the same global batches.
    out = tmp_path / "pod.npz"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {DRIVER} --out={out} --steps={STEPS}\n")
    python.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "local.sh"), "--config=unused", "--workdir=unused",
         "--processes=2", "--devices_per_process=4", f"--port={free_port()}",
         f"--python={python}"],
        env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Process 1 prints through local.sh's "[p1]" prefix (gloo's own output may share the line).
    assert "process 0: devices=8" in proc.stdout, proc.stdout[-3000:]
    assert any(line.startswith("[p1] ") and "process 1: devices=8" in line
               for line in proc.stdout.splitlines()), proc.stdout[-3000:]
    _assert_same_run(out, eight_device_run)
