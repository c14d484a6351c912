"""Helpers for tests that run JAX programs in subprocesses (the train CLI, the driver).

Compilation dominates these tests, so every subprocess of a test session shares one
persistent compilation cache: ``JAX_COMPILATION_CACHE_DIR`` from the environment when set
(CI sets one), otherwise a temporary directory made once per session (per xdist worker)
and removed at exit. ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` caches even the
small programs (state initialisation) that JAX would otherwise recompile every time.
"""

from __future__ import annotations

import atexit
import functools
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.py")


@functools.cache
def session_cache_dir() -> str:
    """The compilation cache directory shared by this session's subprocesses."""
    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if configured:
        return configured
    path = tempfile.mkdtemp(prefix="detcon_jax_test_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """Environment of a CPU JAX subprocess with ``devices`` fake devices (default 1)."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = session_cache_dir()
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def train_command(workdir: os.PathLike, *flags: str) -> list[str]:
    """``python -m detcon_jax.train`` on the smoke config with extra flags."""
    return [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}",
            f"--workdir={workdir}", *flags]


def run_cli(workdir: os.PathLike, *flags: str, devices: int | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the train CLI to completion and returns the finished process (text output)."""
    return subprocess.run(train_command(workdir, *flags), cwd=REPO, env=subprocess_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_state(step_dir: pathlib.Path) -> dict:
    """Leaves of a checkpoint's ``state`` item, keyed by their tree path."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(pathlib.Path(step_dir) / "state")
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def checkpoint_steps(ckpt_dir: pathlib.Path) -> list[int]:
    """Complete checkpoint steps (orbax renames a step directory to its number when done)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def tensorboard_scalars(logdir: os.PathLike, tag: str) -> dict[int, float]:
    """Values of the scalar ``tag`` by step, read from every event file under ``logdir``."""
    import tensorflow as tf

    values: dict[int, float] = {}
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = (float(tf.make_ndarray(value.tensor))
                                          if value.HasField("tensor") else value.simple_value)
    return values


def assert_same_state(got: dict, want: dict, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Float leaves to ``|a - b| <= atol + rtol |b|``, integer leaves exactly."""
    import numpy as np

    assert got.keys() == want.keys()
    for key, value in want.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)
