"""Shared test fixtures: golden vectors and real data, config files, the full smoke run, a GCS
emulator."""

import importlib.util
import os
import pathlib
import types

import pytest
from gcs_emulator import LOOPBACK_ONLY, EmulatorServer, reset_path_caches

# Keep XLA:CPU from grabbing every core per test process (CI has 2 cores).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test may reach a cloud endpoint or metadata server (tests/gcs_emulator.py). Set before
# any test module imports google-auth or etils.epath, which read these when first used.
os.environ.update(LOOPBACK_ONLY)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DETCON_SHARED", REPO_ROOT.parent / "shared"))


def load_module(path: os.PathLike) -> types.ModuleType:
    """Imports the Python file ``path`` (an experiment config, a golden-vector script)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_config():
    """A fresh copy of ``experiments/smoke.py``'s config."""
    return load_module(REPO_ROOT / "experiments" / "smoke.py").get_config()


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    path = SHARED / "golden"
    if not path.is_dir():
        raise FileNotFoundError(f"golden vectors not found at {path} (set DETCON_SHARED)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    path = SHARED / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"shared data not found at {path} (set DETCON_SHARED)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted smoke run (STEPS steps, a checkpoint every EVERY, all kept).

    The train tests compare against it and copy its checkpoints. Session-scoped: with
    ``--dist=loadfile`` each xdist worker that runs one of those files trains it once.
    """
    from cli_helpers import RUN, run_cli

    workdir = tmp_path_factory.mktemp("full")
    proc = run_cli(workdir, *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on 127.0.0.1 (bucket ``gcs.bucket``) for one test module.

    This process's environment points at it while the module runs (subprocesses started
    with ``os.environ`` inherit it; ``gcs.env()`` gives the variables).
    """
    server = EmulatorServer().start()
    variables = server.env()
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    reset_path_caches()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_path_caches()
