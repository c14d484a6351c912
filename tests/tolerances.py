"""float32 tolerances derived from the error scale of the computation they check.

A float32 sum of ``n`` terms of magnitude ``m`` carries a rounding error of order
``eps * sqrt(n) * m`` (``eps = 2**-23``: each addition rounds independently, so the errors
add like a random walk), and two summation orders of the same sum differ by about as much.
XLA:CPU may change that order with thread scheduling, so two runs of one program on a
loaded machine can differ at this scale. A chain of ``depth`` such reductions (network
layers) adds ``depth`` independent errors of that size: ``eps * sqrt(n * depth) * m``.

Each test states its ``n``, ``m`` and ``depth`` and uses `f32_tolerance`: that scale times
`SAFETY`, which leaves room for the constant factors the estimate ignores and still fails
on real differences (a wrong formula, a missing term, another sampling grid), which are
orders of magnitude larger than rounding.
"""

from __future__ import annotations

import math
import re

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ~= 1.19e-7
SAFETY = 4.0


def f32_tolerance(reduction: int, *, magnitude: float = 1.0, depth: int = 1,
                  safety: float = SAFETY) -> float:
    """``safety * eps32 * sqrt(reduction * depth) * magnitude``: the tolerance of a float32
    result made of ``depth`` chained sums of ``reduction`` terms of size ``magnitude``."""
    return safety * EPS32 * math.sqrt(max(int(reduction) * int(depth), 1)) * magnitude


def max_rel_err(got, want) -> float:
    """``max |got - want| / max |want|``: an error relative to the result's own scale."""
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def assert_f32_close(got, want, tol: float, *, err_msg: str = "") -> None:
    """``|got - want| <= tol * max |want|`` elementwise: an error relative to the scale of
    the result (rounding of a float32 sum does not shrink with a small element)."""
    want = np.asarray(want, np.float64)
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                               atol=tol * scale, err_msg=err_msg)


def assert_state_close(got, want, tol: float, *, err_msg: str = "") -> None:
    """Elementwise ``|got - want| <= tol * (|want| + mean |want|)``: relative error ``tol``,
    with the array's mean magnitude as the floor for elements near zero (their rounding is
    at the scale of the sums that made them, not of their own value)."""
    want = np.asarray(want, np.float64)
    floor = float(np.abs(want).mean()) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol,
                               atol=tol * floor, err_msg=err_msg)


def assert_leaves_close(got: dict, want: dict, tol: float) -> None:
    """Flattened trees ``{path: array}`` (e.g. a training state): integer leaves exactly,
    float leaves to ``|a - b| <= tol (|b| + m)`` with ``m`` the largest magnitude among the
    leaves of the same part (the path's first name: online_params, opt_state, ...). Some
    leaves are rounding noise of the computation that made them (the bias of a layer
    followed by BatchNorm has a zero gradient up to rounding), so their floor is the
    scale of their part, not their own."""
    assert got.keys() == want.keys()

    def part(key: str) -> str:
        match = re.search(r"\w+", key)
        return match.group(0) if match else key

    floors: dict[str, float] = {}
    for key, value in want.items():
        if np.asarray(value).dtype.kind == "f" and np.size(value):
            floors[part(key)] = max(floors.get(part(key), 0.0), float(np.abs(value).max()))
    for key, value in want.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(got[key], np.float64), value, rtol=tol,
                                       atol=tol * floors.get(part(key), 0.0), err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)
