"""``results.md`` and the plots, from the results of every stage."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from typing import Any

from detcon_jax.reproduce.budgets import METHODS, PROBE_TITLES, PROBES
from detcon_jax.reproduce.claims import SMOKE_BUDGETS, estimate, metric
from detcon_jax.reproduce.common import duration


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}"


def heading(title: str, results: Mapping[str, Any]) -> list[str]:
    """The first lines of a report: ``title`` at the run's budget, and its command."""
    return [f"# {title} at the `{results['budget']}` budget (our numbers)", "",
            f"- Command: `{results['command']}`"]


def render_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the setting, one table of every number and the claims checked."""
    splits = results["splits"]
    lines = [
        *heading("DetCon reproduction", results),
        f"- Date: {results['date']}; machine: {results['machine']}; wall time: "
        f"{duration(results['wall_time_s'])} (this invocation; pretraining + probes of all "
        f"stages, summed over resumed invocations: {duration(results['stage_time_s'])})",
        f"- Pretraining: {splits['pretrain']}; every method with the same model, steps and "
        f"optimiser (see `budget_settings` in results.json).",
        "",
        "| method | " + " | ".join(
            f"{PROBE_TITLES[p]}<br>{splits[p]}" for p in PROBES)
        + " | final pretraining loss | pretraining time | paper's corresponding claim |",
        "|---|" + "---|" * (len(PROBES) + 3),
    ]
    runs = seed_runs(results)
    for method in METHODS:
        row = results["methods"][method.name]
        loss = row.get("final_loss")
        time_s = row.get("train_time_s")
        lines.append(
            f"| {method.label} | " + " | ".join(_with_error(runs, method.name, p)
                                                for p in PROBES)
            + f" | {_fmt(loss)} | {'—' if not time_s else duration(time_s)} | "
            f"{method.paper} |")
    lines += ["", "Losses differ between objectives (BYOL's regression loss vs the "
              "contrastive ones), so compare loss values only within one method's curve.", "",
              "## The paper's claims checked on our numbers", "",
              _noise_note(results, len(runs)), "",
              "| claim | paper (qualitative) | ours | holds here? |", "|---|---|---|---|"]
    for claim in results["claims"]:
        smoke = " (smoke test)" if claim.get("smoke_test") else ""
        lines.append(f"| {claim['claim']} | {claim['paper']} | {claim['ours']} | "
                     f"{claim['verdict']}{smoke} |")
    lines += ["", "Plots: `loss_curves.png` (pretraining loss per method, from each "
              "workdir's `metrics.jsonl`), `probes.png` (each probe's metric per method).", ""]
    return "\n".join(lines)


def seed_runs(results: Mapping[str, Any]) -> list[Mapping[str, Mapping[str, Any]]]:
    """The method rows of this run and of the other pretraining seeds' runs
    (``--seed_runs``), one mapping per seed."""
    return [results["methods"], *[o["methods"] for o in results.get("other_seeds", [])]]


def _with_error(runs: list[Mapping[str, Mapping[str, Any]]], name: str, probe: str) -> str:
    """A table cell: the value, or with several seeds their mean ± standard error."""
    if len(runs) < 2:
        return _fmt(runs[0][name].get(probe))
    mean, err, _ = estimate(runs, name, probe)
    return _fmt(mean) if err is None else f"{mean:.2f} ± {err:.2f}"


def _noise_note(results: Mapping[str, Any], seeds: int) -> str:
    """How the verdicts below were decided (and, for the tiny budget, that they are not)."""
    if seeds >= 2:
        noise = (f"Values are means over {seeds} pretraining seeds ± their standard error "
                 "(the seeds' standard deviation / sqrt(seeds))")
    else:
        noise = ("One pretraining seed: the error bars are the probes' test-set sampling "
                 "noise (binomial, for the top-1 accuracies; none for the mIoU, whose "
                 "comparisons need `--seed_runs`)")
    text = (f"{noise}. A difference within 2 combined standard errors is a tie, neither "
            "yes nor no.")
    if results["budget"] in SMOKE_BUDGETS:
        text += (f" **The `{results['budget']}` budget is a smoke test of the pipeline** (a "
                 "few steps on a few images): its verdicts say nothing about the paper.")
    return text


def plot(results: Mapping[str, Any], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detcon_jax import metrics as metrics_lib

    trained = [m for m in METHODS if m.method is not None]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, method in zip(axes.ravel(), trained, strict=True):
        path = os.path.join(results["methods"][method.name]["workdir"], "metrics.jsonl")
        rows = [r for r in metrics_lib.read_jsonl(path) if r.get("loss") is not None] \
            if os.path.isfile(path) else []
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
        ax.set_title(method.label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Pretraining loss on CamVid train ({results['budget']} budget)")
    fig.tight_layout()
    loss_path = os.path.join(out, "loss_curves.png")
    fig.savefig(loss_path, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(PROBES), figsize=(15, 4.5), squeeze=False)
    labels = [m.label for m in METHODS]
    colours = ["C0", "C1", "C2", "C3", "C4", "C5", "0.6"]
    for ax, probe in zip(axes.ravel(), PROBES, strict=True):
        values = [metric(results["methods"][m.name], probe) for m in METHODS]
        ax.bar(range(len(values)), [0 if math.isnan(v) else v for v in values], color=colours)
        ax.axhline(values[-1], color="0.3", linestyle="--", linewidth=1)
        for i, v in enumerate(values):
            ax.text(i, 0 if math.isnan(v) else v, _fmt(v), ha="center", va="bottom",
                    fontsize=8)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{PROBE_TITLES[probe]}\n{results['splits'][probe]}", fontsize=9)
    fig.suptitle(f"Probes per method ({results['budget']} budget; dashed: random init)")
    fig.tight_layout()
    probe_path = os.path.join(out, "probes.png")
    fig.savefig(probe_path, dpi=100)
    plt.close(fig)
    return [loss_path, probe_path]


def final_loss(workdir: str) -> float | None:
    from detcon_jax import metrics as metrics_lib

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    rows = [r for r in metrics_lib.read_jsonl(path) if r.get("loss") is not None]
    return float(rows[-1]["loss"]) if rows else None


def machine() -> str:
    cores = os.cpu_count()
    try:
        import jax

        device = jax.devices()[0]
        kind = f"{device.platform} ({getattr(device, 'device_kind', '')})"
    except Exception:  # the report must not fail on an exotic runtime
        kind = "unknown device"
    return f"{platform.node()}, {platform.machine()}, {cores} CPU cores, JAX on {kind}"
