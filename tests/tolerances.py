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
