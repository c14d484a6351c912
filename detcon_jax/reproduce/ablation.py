"""``--table=ablation``: DetCon-B's negatives / two-views ablation at CPU scale on CamVid.

The review's table (issue 19; the paper's setting, transfer metric and pre-training data for
it are not restated here, so its numbers are quoted only to show the direction of each
change) has three rows, each with FH and ground-truth masks:

=================================  =========================================================
``detcon``                         the official loss (negatives from the global batch,
                                   across the two views)
``no_all_negatives``               negatives only from a block of images
                                   (``loss.negatives='group'``)
``no_all_negatives_no_two_views``  as above and ``loss.cross_view=False``
=================================  =========================================================

Here every cell is the budget's DetCon-B pretraining on the CamVid ``train`` images with
that row's loss switches and mask source, scored with the CamVid segmentation probe, for
each of ``--seeds`` pretraining seeds (the probe seed stays ``--seed``). The group is a
quarter of the batch (4 images of 16 at the ``small`` budget): 4x fewer negatives than the
global batch, where the official setting had 128x fewer (the per-device batch of a pod);
a batch of 16 cannot express that ratio. The table reports the mean over seeds, the
standard deviation and each seed's value, so that a difference can be read against the
pretraining-seed noise.

Writes ``OUT/ablation.json`` and ``OUT/ablation.md``; workdirs are ``OUT/seedS/CELL``
(resumable as the main comparison: finished pretrainings and cached probes are reused).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from detcon_jax.reproduce.budgets import PROBES, Budget, Method
from detcon_jax.reproduce.common import ReproduceError, duration, log, mean_std, write_table
from detcon_jax.reproduce.evaluation import evaluate
from detcon_jax.reproduce.report import heading, machine
from detcon_jax.reproduce.training import run_training

# Row -> (label, the review's number with FH masks, with GT masks).
ROWS: dict[str, tuple[str, float, float]] = {
    "detcon": ("DetCon", 33.6, 37.0),
    "no_all_negatives": ("without all negatives", 32.2, 38.5),
    "no_all_negatives_no_two_views": ("without all negatives and two views", 27.7, 38.8),
}
MASKS = ("fh", "gt")


def group_size(budget: Budget) -> int:
    """Images per negatives group in the ablated rows: a quarter of the batch."""
    return max(1, budget.batch_size // 4)


def cell_method(budget: Budget, row: str, masks: str) -> Method:
    """The pretraining of one cell, as a reproduction `Method` with the row's overrides."""
    overrides: list[tuple[str, Any]] = []
    if row != "detcon":
        overrides += [("loss.negatives", "group"),
                      ("loss.negatives_group_size", group_size(budget))]
    if row == "no_all_negatives_no_two_views":
        overrides.append(("loss.cross_view", False))
    label, paper_fh, paper_gt = ROWS[row]
    paper = paper_fh if masks == "fh" else paper_gt
    return Method(f"{row}_{masks}", f"{label} ({masks.upper()} masks)", "detcon_b", masks,
                  f"review: {paper}", overrides=tuple(overrides))


def pretrain_and_probe(budget: Budget, method: Method, seed: int, *, out: str, camvid: str,
                       camvid_train: str, cifar_dir: str | None, probe_seed: int,
                       probes: Sequence[str] = PROBES
                       ) -> tuple[Budget, str, dict[str, Any], dict[str, Any]]:
    """One cell of a table over seeds: pretrains (or reuses) ``method`` with pretraining seed
    ``seed`` in ``OUT/seed{seed}/{method.name}`` and runs (or reuses) its ``probes``; returns
    (the seeded budget, the workdir, `run_training`'s bookkeeping, `evaluate`'s results)."""
    seeded = dataclasses.replace(budget, pretrain_seed=seed)
    workdir = os.path.join(out, f"seed{seed}", method.name)
    info = run_training(seeded, method, camvid_train, workdir)
    result = evaluate(seeded, method, workdir, budget.num_steps, cifar_dir, camvid, probe_seed,
                      probes=probes)
    return seeded, workdir, info, result


def render_ablation(results: Mapping[str, Any]) -> str:
    """``ablation.md``: the review's table with ours beside it, and the noise."""
    seeds = results["seeds"]
    lines = [
        *heading("Negatives / two-views ablation", results),
        f"- Date: {results['date']}; machine: {results['machine']}; wall time "
        f"{duration(results['wall_time_s'])}.",
        f"- Ours: CamVid segmentation probe mIoU (%) on {results['segmentation_split']}, "
        f"DetCon-B pretrained on CamVid train; mean ± standard deviation over pretraining "
        f"seeds {seeds} (each seed's value in brackets). Negatives group: "
        f"{results['group_size']} images of a batch of {results['batch_size']}.",
        "- Review: its numbers as quoted in issue 19 (its metric and pre-training are not "
        "ours: compare directions, not values).",
        "",
        "| row | review, FH | ours, FH | review, GT | ours, GT |",
        "|---|---|---|---|---|",
    ]
    for row, (label, paper_fh, paper_gt) in ROWS.items():
        cells = []
        for masks in MASKS:
            if f"{row}_{masks}" not in results["cells"]:
                cells.append("not run")
                continue
            cell = results["cells"][f"{row}_{masks}"]["miou"]
            spread = "" if cell["std"] is None else f" ± {cell['std']:.2f}"
            each = ", ".join(f"{v:.2f}" for v in cell["values"])
            cells.append(f"{cell['mean']:.2f}{spread} [{each}]")
        lines.append(f"| {label} | {paper_fh} | {cells[0]} | {paper_gt} | {cells[1]} |")
    noise = [c["miou"]["std"] for c in results["cells"].values() if c["miou"]["std"]]
    lines += ["", "Noise: " + (
        f"the pretraining-seed standard deviation of a cell is {min(noise):.2f} to "
        f"{max(noise):.2f} mIoU points; a difference between rows smaller than about twice "
        "that is not a result at this scale." if noise else
        "one seed only: no estimate of the pretraining-seed noise; run more --seeds."), ""]
    return "\n".join(lines)


def run_ablation(budget: Budget, *, camvid: str, camvid_train: str, out: str,
                 seeds: Sequence[int], probe_seed: int, segmentation_split: str,
                 command: Sequence[str], masks_sources: Sequence[str] = MASKS
                 ) -> dict[str, Any]:
    """Pretrains and probes every cell (of ``masks_sources``) for every seed; writes and
    returns the results."""
    if not seeds:
        raise ReproduceError("--seeds: give at least one pretraining seed")
    unknown = sorted(set(masks_sources) - set(MASKS))
    if unknown or not masks_sources:
        raise ReproduceError(f"--ablation_masks must be a subset of {MASKS}, got "
                             f"{list(masks_sources)}")
    start = time.perf_counter()
    cells: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        for masks in (m for m in MASKS if m in masks_sources):
            method = cell_method(budget, row, masks)
            runs = []
            for seed in seeds:
                _, workdir, info, result = pretrain_and_probe(
                    budget, method, seed, out=out, camvid=camvid, camvid_train=camvid_train,
                    cifar_dir=None, probe_seed=probe_seed, probes=("segmentation",))
                runs.append({"seed": seed, "workdir": workdir, "train_command": info["command"],
                             "miou": result["segmentation"]["miou"]})
                log(f"ablation {method.name} seed {seed}: mIoU "
                    f"{result['segmentation']['miou']:.2f}%")
            cells[method.name] = {"row": row, "masks": masks, "label": method.label,
                                  "overrides": dict(method.overrides), "runs": runs,
                                  "review": method.paper,
                                  "miou": mean_std([r["miou"] for r in runs])}
    results = {
        "table": "ablation", "budget": budget.name, "seeds": list(seeds),
        "budget_settings": dataclasses.asdict(budget), "group_size": group_size(budget),
        "batch_size": budget.batch_size, "segmentation_split": segmentation_split,
        "command": shlex.join([os.path.basename(sys.executable), *command]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "cells": cells,
        "wall_time_s": time.perf_counter() - start,
    }
    write_table(out, "ablation", results, render_ablation(results))
    return results
