"""The paper's claims checked on our numbers, with their noise.

A comparison of two methods on a probe is decided only outside the noise of the numbers:

* error bars come from the pretraining seeds: with results of two or more
  ``--pretrain_seed`` runs (``--seed_runs``), each method's probe value is the mean over the
  seeds and its standard error the seeds' standard deviation / sqrt(seeds);
* with one seed, the probe's own sampling noise is measured from its test set: a top-1
  accuracy on ``n`` test images has the binomial standard error
  ``100 sqrt(p (1 - p) / n)``; the segmentation mIoU has no such formula, so one seed gives
  no noise estimate for it and its comparisons say so;
* a difference within ``TIE_Z`` combined standard errors (about 95 %) is a tie: neither
  "yes" nor "no" (``holds`` is ``None``).

The tiny budget (a few steps on a few images) is a smoke test of the pipeline: its verdicts
are computed the same way but marked ``smoke_test`` and say nothing about the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from detcon_jax.reproduce.budgets import METHODS, PROBE_TITLES, PROBES

TIE_Z = 2.0
SMOKE_BUDGETS = ("tiny",)
# Probes whose value is a top-1 accuracy (binomial sampling noise on the test set).
_ACCURACY_PROBES = ("linear", "knn")

Rows = Mapping[str, Mapping[str, Any]]


def metric(row: Mapping[str, Any], probe: str) -> float:
    value = row.get(probe)
    return float("nan") if value is None else float(value)


def num_test(row: Mapping[str, Any], probe: str) -> int | None:
    """Test images of ``probe`` in a results row (from its ``evaluation`` entry)."""
    entry = (row.get("evaluation") or {}).get(probe) or {}
    count = entry.get("num_test")
    return int(count) if count else None


def estimate(runs: Sequence[Rows], name: str, probe: str) -> tuple[float, float | None, int]:
    """(mean over the seeds, its standard error or None when unknown, number of seeds)."""
    values = [metric(rows[name], probe) for rows in runs if name in rows]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), None, 0
    mean = sum(values) / len(values)
    if len(values) >= 2:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return mean, math.sqrt(var / len(values)), len(values)
    n = num_test(runs[0][name], probe)
    if probe in _ACCURACY_PROBES and n:
        p = min(max(mean / 100.0, 0.0), 1.0)
        # At p = 0 or 1 the binomial formula gives 0; one image's worth is the resolution.
        return mean, max(100.0 * math.sqrt(p * (1.0 - p) / n), 100.0 / n / 2), 1
    return mean, None, 1


def compare(runs: Sequence[Rows], a: str, b: str, probe: str, op: str = ">"
            ) -> dict[str, Any]:
    """Verdict of ``a op b`` on ``probe``: ``yes``, ``no``, ``tie`` or ``no noise estimate``.

    ``>=`` and ``>`` differ only outside the noise: a tie decides neither.
    """
    (va, sa, na), (vb, sb, nb) = estimate(runs, a, probe), estimate(runs, b, probe)
    diff = va - vb
    margin = None if sa is None or sb is None else TIE_Z * math.hypot(sa, sb)
    if not math.isfinite(diff):
        verdict, holds = "no numbers", None
    elif margin is None:
        verdict, holds = "no noise estimate (one pretraining seed)", None
    elif abs(diff) <= margin:
        verdict, holds = "tie", None
    else:
        verdict, holds = ("yes", True) if diff > 0 else ("no", False)
    return {"a": va, "b": vb, "diff": diff, "margin": margin, "seeds": min(na, nb),
            "verdict": verdict, "holds": holds}


def _fmt(value: float, err: float | None) -> str:
    return f"{value:.2f}" if err is None else f"{value:.2f} ± {err:.2f}"


def check_claims(runs: Rows | Sequence[Rows], *, budget: str | None = None
                 ) -> list[dict[str, Any]]:
    """The paper's comparisons, each decided outside the noise (see the module docstring).

    Args:
      runs: the results rows of one run (method name -> row with ``linear``, ``knn``,
        ``segmentation`` and optionally ``evaluation``), or a list of them, one per
        pretraining seed.
      budget: the budget's name; the tiny budget's claims are marked ``smoke_test``.

    Returns:
      One dict per claim: ``claim``, ``paper``, ``ours`` (values with standard errors),
      ``verdict`` (``yes`` / ``no`` / ``tie`` / ``no noise estimate ...``), ``holds``
      (True / False / None for anything but a clear verdict), ``seeds``, ``smoke_test``.
    """
    if isinstance(runs, Mapping):
        runs = [runs]
    runs = list(runs)
    smoke = budget in SMOKE_BUDGETS
    claims: list[dict[str, Any]] = []

    def ours(a: str, b: str, probe: str) -> str:
        (va, sa, _), (vb, sb, _) = estimate(runs, a, probe), estimate(runs, b, probe)
        return f"{probe} {_fmt(va, sa)} vs {_fmt(vb, sb)}"

    for method in METHODS:
        if method.method is None:
            continue
        results = [compare(runs, method.name, "random", p) for p in PROBES]
        verdicts = [r["verdict"] for r in results]
        if "yes" in verdicts:
            verdict, holds = "yes", True
        elif all(v == "no" for v in verdicts):
            verdict, holds = "no", False
        elif "tie" in verdicts:
            verdict, holds = "tie", None
        else:
            verdict, holds = next(v for v in verdicts if v != "no"), None
        claims.append({
            "claim": f"{method.label} beats random init on at least one probe",
            "paper": "implicit in the paper (every pretrained model transfers better than "
                     "training from scratch)",
            "ours": ", ".join(ours(method.name, "random", p) for p in PROBES),
            "verdict": verdict, "holds": holds,
            "seeds": min(r["seeds"] for r in results), "smoke_test": smoke})

    def add(a: str, b: str, probe: str, paper: str, op: str = ">") -> None:
        result = compare(runs, a, b, probe, op)
        claims.append({"claim": f"{label(a)} {op} {label(b)} ({PROBE_TITLES[probe]})",
                       "paper": paper, "ours": ours(a, b, probe).split(" ", 1)[1],
                       "verdict": result["verdict"], "holds": result["holds"],
                       "seeds": result["seeds"], "smoke_test": smoke})

    dense = ("paper: DetCon-B > BYOL on dense transfer (COCO detection and instance "
             "segmentation, PASCAL VOC and Cityscapes segmentation)")
    add("detcon_b_fh", "byol", "segmentation", dense)
    add("detcon_b_gt", "byol", "segmentation", dense)
    add("detcon_s_gt", "simclr", "segmentation", "paper: DetCon-S > SimCLR on dense transfer")
    ablation = ("paper: mask quality matters; ground-truth >= FH >= grid (spatial heuristic) "
                "masks in the mask ablation")
    for probe in PROBES:
        add("detcon_b_gt", "detcon_b_fh", probe, ablation, ">=")
        add("detcon_b_fh", "detcon_b_grid", probe, ablation, ">=")
    return claims


def label(name: str) -> str:
    return next(m.label for m in METHODS if m.name == name)
