"""Shared test fixtures: locations of the golden vectors and real data, a GCS emulator."""

import os
import pathlib

import pytest
from gcs_emulator import LOOPBACK_ONLY, EmulatorServer, reset_path_caches

# Keep XLA:CPU from grabbing every core per test process (CI has 2 cores).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test may reach a cloud endpoint or metadata server (tests/gcs_emulator.py). Set before
# any test module imports google-auth or etils.epath, which read these when first used.
os.environ.update(LOOPBACK_ONLY)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DETCON_SHARED", REPO_ROOT.parent / "shared"))


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
