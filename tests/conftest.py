"""Shared test fixtures: locations of the golden vectors and real data."""

import os
import pathlib

import pytest

# Keep XLA:CPU from grabbing every core per test process (CI has 2 cores).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
