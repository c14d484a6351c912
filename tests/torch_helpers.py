"""torch and torchvision for the export tests: skipped where absent, required in CI.

CI installs them (``pip install -e '.[torch]'``) and sets ``DETCON_REQUIRE_TORCH=1``, so a
broken install fails the run there instead of skipping the checks.
"""

from __future__ import annotations

import importlib
import os

import pytest


def require(name: str):
    """Imports ``name``: an ImportError where DETCON_REQUIRE_TORCH=1, otherwise a skip."""
    if os.environ.get("DETCON_REQUIRE_TORCH") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (the torch checks of "
                                            f"the exports need torch and torchvision)")
