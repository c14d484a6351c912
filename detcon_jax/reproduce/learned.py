"""``--table=learned``: DetCon-B with learned masks beside FH, grid and GT masks on CamVid.

Four cells, each the budget's DetCon-B pretraining on the CamVid ``train`` images with one mask
source, for each of ``--seeds`` pretraining seeds, scored with the three probes of the main
comparison (CIFAR-10 linear and k-NN, CamVid segmentation probe; the probe seed stays
``--seed``):

============  ===========================================================================
``fh``, ``gt``  the ablation's ``detcon`` row (`ablation.cell_method`): the same workdirs
                (``OUT/seedS/detcon_fh``, ``OUT/seedS/detcon_gt``), config and overrides, so
                that running both tables with one ``--out`` pretrains them once
``grid``        4 x 4 grid masks (``OUT/seedS/detcon_grid``)
``learned``     ``masks.source='learned'`` (``OUT/seedS/detcon_learned``), the settings of
                ``experiments/detcon_b_camvid.py:learned`` adapted to the budget
                (`learned_overrides`): the target network's block-group-3 features of the
                covering window at `cover_size` px (about 4/3 of a view's side, a multiple of
                32: 128 px at ``small``, an 8 x 8 grid), K = 8 cosine k-means, grid-mask
                bootstrap for the first third of the run; every checkpoint kept
============  ===========================================================================

For the learned cells the agreement of the learned masks with the GT label maps (the mean
best-overlap IoU of ``detcon_jax.mask_agreement``, on the un-augmented CamVid ``train``
images, void id 11 excluded) is measured at every kept checkpoint (every
``checkpoint_every`` steps and the last), with FH's and grid's agreement (constant over
training) beside it.

Writes ``OUT/learned.json``, ``OUT/learned.md`` and ``OUT/learned_agreement.png``; resumable
as the other tables (finished pretrainings, cached probes and cached agreements
(``WORKDIR/agreement.json``, ``OUT/agreement_baselines.json``) are reused).
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

from detcon_jax.reproduce.ablation import cell_method as ablation_cell
from detcon_jax.reproduce.ablation import pretrain_and_probe
from detcon_jax.reproduce.budgets import PROBE_TITLES, PROBES, Budget, Method
from detcon_jax.reproduce.common import (
    ReproduceError,
    duration,
    log,
    mean_std,
    read_json,
    write_json,
    write_table,
)
from detcon_jax.reproduce.report import heading, machine
from detcon_jax.reproduce.training import load_config

CELLS = ("learned", "fh", "grid", "gt")
LABELS = {"learned": "learned masks", "fh": "FH masks", "grid": "grid masks", "gt": "GT masks"}
# Images of CamVid train the agreement is measured on (None: all); tiny: a smoke test.
AGREEMENT_IMAGES = {"tiny": 4}
VOID_IDS = (11,)


def cover_size(budget: Budget) -> int:
    """The learned masks' covering-window side: about 4/3 of a view's, a multiple of 32."""
    return 32 * max(1, round(budget.image_size * 4 / 3 / 32))


def kept_checkpoints(budget: Budget) -> int:
    """``checkpoint.keep`` that keeps every checkpoint of the run."""
    return budget.num_steps // budget.checkpoint_every + 1


def learned_overrides(budget: Budget) -> tuple[tuple[str, Any], ...]:
    """The learned cell's config changes on top of the budget's DetCon-B config."""
    return (("masks.learned.image_size", cover_size(budget)), ("masks.learned.layer", 3),
            ("masks.learned.num_clusters", 8), ("masks.learned.bootstrap_source", "grid"),
            ("masks.learned.bootstrap_steps", budget.num_steps // 3),
            ("checkpoint.keep", kept_checkpoints(budget)))


def cell_method(budget: Budget, masks: str) -> Method:
    """The pretraining of one cell (fh and gt: the ablation's ``detcon`` row itself)."""
    if masks in ("fh", "gt"):
        return ablation_cell(budget, "detcon", masks)
    if masks == "grid":
        return Method("detcon_grid", "DetCon-B (grid masks)", "detcon_b", "grid",
                      "paper: spatial-heuristic masks rank below FH and ground-truth masks")
    if masks == "learned":
        return Method("detcon_learned", "DetCon-B (learned masks)", "detcon_b", "learned",
                      "Odin (Hénaff et al., ECCV 2022): discovered masks transfer better "
                      "than FH", overrides=learned_overrides(budget))
    raise ValueError(f"masks must be one of {CELLS}, got {masks!r}")


def learned_agreement(budget: Budget, method: Method, camvid_train: str, workdir: str,
                      images: Any) -> dict[str, dict[str, Any]]:
    """``step -> mask_agreement.summarize`` of the learned masks at step 0 (the run's initial
    state: a random discovery network) and every complete checkpoint of ``workdir``, cached
    in ``WORKDIR/agreement.json``. ``images``: a callable giving the labelled images (called
    only when a step is missing)."""
    from detcon_jax import checkpoint as ckpt_lib
    from detcon_jax import discovery, mask_agreement

    config = load_config(budget, method, camvid_train)
    path = os.path.join(workdir, "agreement.json")
    key = {"num_images": AGREEMENT_IMAGES.get(budget.name), "void_ids": list(VOID_IDS)}
    cache = read_json(path)
    if cache.get("key") != key:
        cache = {"key": key, "steps": {}}
    for step in [0, *ckpt_lib.complete_steps(os.path.join(workdir, "checkpoints"))]:
        if str(step) in cache["steps"]:
            continue
        state = discovery.load_state(config, None if step == 0 else workdir, step=step)
        result = mask_agreement.agreement(config, ["learned"], images(config), state=state,
                                          void_ids=VOID_IDS)["learned"]
        cache["steps"][str(step)] = result
        write_json(path, cache)
        log(f"agreement {method.name} step {step}: mean best-overlap IoU {result['mean']:.4f}")
    return cache["steps"]


def baseline_agreement(budget: Budget, camvid_train: str, out: str, images: Any
                       ) -> dict[str, dict[str, Any]]:
    """FH's and grid's agreement (their cells' settings), cached in
    ``OUT/agreement_baselines.json``."""
    from detcon_jax import mask_agreement

    path = os.path.join(out, "agreement_baselines.json")
    results = {}
    cache = read_json(path)
    for masks in ("fh", "grid"):
        config = load_config(budget, cell_method(budget, masks), camvid_train)
        key = {"data": camvid_train, "num_images": AGREEMENT_IMAGES.get(budget.name),
               "void_ids": list(VOID_IDS), "fh_scale": config.data.fh_scale,
               "fh_min_size": config.data.fh_min_size, "grid_size": config.masks.grid_size}
        if cache.get(masks, {}).get("key") != key:
            result = mask_agreement.agreement(config, [masks], images(config),
                                              void_ids=VOID_IDS, progress=True)[masks]
            cache[masks] = {"key": key, "result": result}
            write_json(path, cache)
            log(f"agreement {masks}: mean best-overlap IoU {result['mean']:.4f}")
        results[masks] = cache[masks]["result"]
    return results


def _cell(summary: Mapping[str, Any], digits: int = 2) -> str:
    spread = "" if summary["std"] is None else f" ± {summary['std']:.{digits}f}"
    each = ", ".join(f"{v:.{digits}f}" for v in summary["values"])
    return f"{summary['mean']:.{digits}f}{spread} [{each}]"


def render_learned(results: Mapping[str, Any]) -> str:
    """``learned.md``: the probes per mask source, the agreement over training, the noise."""
    seeds = results["seeds"]
    agreement = results["agreement"]
    lines = [
        *heading("Learned masks vs FH, grid and GT masks", results),
        f"- Date: {results['date']}; machine: {results['machine']}; wall time "
        f"{duration(results['wall_time_s'])}.",
        f"- DetCon-B pretrained on CamVid train with each mask source; mean ± standard "
        f"deviation over pretraining seeds {seeds} (each seed's value in brackets); CamVid "
        f"probe on {results['segmentation_split']}. Learned masks: {results['learned_setting']}.",
        "",
        "| masks | " + " | ".join(PROBE_TITLES[p] for p in PROBES) + " |",
        "|---|" + "---|" * len(PROBES),
    ]
    for masks in CELLS:
        cell = results["cells"].get(masks)
        values = [_cell(cell[p]) if cell else "not run" for p in PROBES]
        lines.append(f"| {LABELS[masks]} | " + " | ".join(values) + " |")
    base = agreement["baselines"]
    lines += [
        "", "## Agreement with the GT masks over training", "",
        f"Mean best-overlap IoU with the CamVid GT label maps ({agreement['images']}; void "
        f"id(s) {agreement['void_ids']} excluded): for every GT segment, the largest IoU with "
        "any predicted segment, averaged over all segments (`mask_agreement`). The learned "
        "masks' cluster maps are upsampled (nearest) to the label resolution. FH and grid do "
        "not change over training.", "",
        "| step | learned | FH | grid |", "|---|---|---|---|",
    ]
    for step, summary in agreement["learned"].items():
        lines.append(f"| {step} | {_cell(summary, 3)} | {base['fh']['mean']:.3f} | "
                     f"{base['grid']['mean']:.3f} |")
    noise = [c[p]["std"] for c in results["cells"].values() for p in PROBES if c[p]["std"]]
    lines += ["", "Noise: " + (
        f"the pretraining-seed standard deviation of a cell is {min(noise):.2f} to "
        f"{max(noise):.2f} points; a difference between mask sources smaller than about "
        "twice that is not a result at this scale." if noise else
        "one seed only: no estimate of the pretraining-seed noise; run more --seeds."),
        "", "Plot: `learned_agreement.png` (the agreement over training).", ""]
    return "\n".join(lines)


def plot_agreement(results: Mapping[str, Any], out: str) -> str:
    """``OUT/learned_agreement.png``: the learned masks' agreement per step (mean ± std over
    seeds), FH's and grid's as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agreement = results["agreement"]
    steps = [int(s) for s in agreement["learned"]]
    means = [v["mean"] for v in agreement["learned"].values()]
    stds = [v["std"] or 0.0 for v in agreement["learned"].values()]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label="learned")
    for masks, colour in (("fh", "C1"), ("grid", "C2")):
        ax.axhline(agreement["baselines"][masks]["mean"], color=colour, linestyle="--",
                   label=LABELS[masks])
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("mean best-overlap IoU with GT")
    ax.set_title(f"Mask agreement with CamVid GT ({results['budget']} budget)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "learned_agreement.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_learned(budget: Budget, *, camvid: str, camvid_train: str, cifar_dir: str, out: str,
                seeds: Sequence[int], probe_seed: int, segmentation_split: str,
                command: Sequence[str]) -> dict[str, Any]:
    """Pretrains and probes every cell for every seed, measures the agreements; writes and
    returns the results."""
    if not seeds:
        raise ReproduceError("--seeds: give at least one pretraining seed")
    start = time.perf_counter()
    loaded: list[Any] = []

    def images(config: Any) -> list:
        if not loaded:  # the same images (config.data: CamVid train) for every source and step
            from detcon_jax import mask_agreement

            loaded.append(mask_agreement.labelled_images(
                config, max_images=AGREEMENT_IMAGES.get(budget.name)))
        return loaded[0]

    cells: dict[str, dict[str, Any]] = {}
    per_seed_agreement: dict[int, dict[str, dict[str, Any]]] = {}
    for masks in CELLS:
        method = cell_method(budget, masks)
        runs = []
        for seed in seeds:
            seeded, workdir, info, result = pretrain_and_probe(
                budget, method, seed, out=out, camvid=camvid, camvid_train=camvid_train,
                cifar_dir=cifar_dir, probe_seed=probe_seed)
            run = {"seed": seed, "workdir": workdir, "train_command": info["command"],
                   "linear": result["linear"]["top1"], "knn": result["knn"]["top1"],
                   "segmentation": result["segmentation"]["miou"]}
            if masks == "learned":
                per_seed_agreement[seed] = learned_agreement(seeded, method, camvid_train,
                                                             workdir, images)
            runs.append(run)
            log(f"learned table {method.name} seed {seed}: linear {run['linear']:.2f}%, "
                f"k-NN {run['knn']:.2f}%, seg mIoU {run['segmentation']:.2f}%")
        cells[masks] = {"label": method.label, "workdir_name": method.name,
                        "overrides": dict(method.overrides), "runs": runs,
                        **{p: mean_std([r[p] for r in runs]) for p in PROBES}}
    steps = sorted(set.intersection(*(set(a) for a in per_seed_agreement.values())), key=int)
    num_images = AGREEMENT_IMAGES.get(budget.name)
    agreement = {
        "learned": {s: mean_std([per_seed_agreement[seed][s]["mean"] for seed in seeds])
                    for s in steps},
        "per_seed": {str(seed): a for seed, a in per_seed_agreement.items()},
        "baselines": baseline_agreement(budget, camvid_train, out, images),
        "images": f"CamVid train, {'all' if num_images is None else num_images} images, "
                  "un-augmented",
        "void_ids": list(VOID_IDS),
    }
    results = {
        "table": "learned", "budget": budget.name, "seeds": list(seeds),
        "budget_settings": dataclasses.asdict(budget), "segmentation_split": segmentation_split,
        "learned_setting": (f"target network, block group 3 of the {cover_size(budget)} px "
                            f"covering window, K = 8 cosine k-means, grid masks for the first "
                            f"{budget.num_steps // 3} of {budget.num_steps} steps"),
        "command": shlex.join([os.path.basename(sys.executable), *command]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "cells": cells, "agreement": agreement,
        "wall_time_s": time.perf_counter() - start,
    }
    results["plot"] = plot_agreement(results, out)
    write_table(out, "learned", results, render_learned(results))
    return results
