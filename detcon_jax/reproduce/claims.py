"""The paper's claims checked on our numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detcon_jax.reproduce.budgets import METHODS, PROBE_TITLES, PROBES


def metric(row: Mapping[str, Any], probe: str) -> float:
    value = row.get(probe)
    return float("nan") if value is None else float(value)


def check_claims(methods: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The paper's comparisons, each checked on our numbers (``holds``: True/False).

    ``methods`` maps method names to rows with ``linear``, ``knn`` and ``segmentation``
    (mIoU) values.
    """
    claims: list[dict[str, Any]] = []
    random_row = methods["random"]
    for method in METHODS:
        if method.method is None:
            continue
        row = methods[method.name]
        better = [p for p in PROBES if metric(row, p) > metric(random_row, p)]
        claims.append({
            "claim": f"{method.label} beats random init on at least one probe",
            "paper": "implicit in the paper (every pretrained model transfers better than "
                     "training from scratch)",
            "ours": ", ".join(f"{p} {metric(row, p):.2f} vs {metric(random_row, p):.2f}"
                              for p in PROBES),
            "holds": bool(better)})

    def compare(a: str, b: str, probe: str, paper: str, op: str = ">") -> None:
        va, vb = metric(methods[a], probe), metric(methods[b], probe)
        holds = va > vb if op == ">" else va >= vb
        claims.append({"claim": f"{label(a)} {op} {label(b)} ({PROBE_TITLES[probe]})",
                       "paper": paper, "ours": f"{va:.2f} vs {vb:.2f}", "holds": bool(holds)})

    dense = ("paper: DetCon-B > BYOL on dense transfer (COCO detection and instance "
             "segmentation, PASCAL VOC and Cityscapes segmentation)")
    compare("detcon_b_fh", "byol", "segmentation", dense)
    compare("detcon_b_gt", "byol", "segmentation", dense)
    compare("detcon_s_gt", "simclr", "segmentation",
            "paper: DetCon-S > SimCLR on dense transfer")
    ablation = ("paper: mask quality matters; ground-truth >= FH >= grid (spatial heuristic) "
                "masks in the mask ablation")
    for probe in PROBES:
        compare("detcon_b_gt", "detcon_b_fh", probe, ablation, ">=")
        compare("detcon_b_fh", "detcon_b_grid", probe, ablation, ">=")
    return claims


def label(name: str) -> str:
    return next(m.label for m in METHODS if m.name == name)
