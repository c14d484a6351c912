"""The reproduction's command line: every stage in order, resumable, then the report."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from detcon_jax import paths
from detcon_jax.configs import ConfigArgError
from detcon_jax.reproduce.ablation import run_ablation
from detcon_jax.reproduce.budgets import BUDGETS, METHODS, Budget, parse_budget
from detcon_jax.reproduce.claims import check_claims
from detcon_jax.reproduce.common import ReproduceError, duration, log, read_json, write_json
from detcon_jax.reproduce.data import check_camvid, cifar_subset
from detcon_jax.reproduce.evaluation import evaluate
from detcon_jax.reproduce.learned import run_learned
from detcon_jax.reproduce.report import final_loss, machine, plot, render_markdown, seed_runs
from detcon_jax.reproduce.training import run_training, save_initial_state


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detcon_jax.reproduce",
        description="Pretrain DetCon-B (GT/FH/grid masks), DetCon-S, BYOL and SimCLR on "
                    "CamVid and probe them and a random init on CIFAR-10 and CamVid.")
    parser.add_argument("--camvid", required=True,
                        help="CamVid folder with train/{images,labels} and val/ or test/")
    parser.add_argument("--cifar10", default=None,
                        help="CIFAR-10 folder with train/CLASS/*.jpg and test/CLASS/*.jpg "
                             "(needed by --table=methods)")
    parser.add_argument("--table", choices=("methods", "ablation", "learned"),
                        default="methods",
                        help="methods: the six methods and random init, three probes; "
                             "ablation: DetCon-B's negatives / two-views ablation with FH "
                             "and GT masks (CamVid probe; reproduce/ablation.py); learned: "
                             "DetCon-B with learned / FH / grid / GT masks, three probes and "
                             "the masks' agreement with GT over training (reproduce/learned.py)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="--table=ablation|learned: comma-separated pretraining seeds")
    parser.add_argument("--ablation_masks", default="fh,gt",
                        help="--table=ablation: the mask columns to run (fh, gt or both)")
    parser.add_argument("--out", required=True, help="output folder (re-run to resume)")
    parser.add_argument("--budget", default="small",
                        help=f"one of {', '.join(sorted(BUDGETS))}, optionally with changed "
                             "scalar settings: NAME,FIELD=VALUE,... (e.g. small,image_size=128; "
                             "the fields of reproduce.Budget)")
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS),
                        help="comma-separated subset of the methods (default: all); the "
                             "report needs all of them")
    parser.add_argument("--seed", type=int, default=0, help="probe seed")
    parser.add_argument("--pretrain_seed", type=int, default=0,
                        help="seed of every pretraining (initialisation, augmentation, mask "
                             "sampling) and of the random-init baseline; repeat a run with "
                             "other values to see the pretraining-seed noise")
    parser.add_argument("--seed_runs", default="",
                        help="comma-separated --out folders of finished runs of the same "
                             "budget with other --pretrain_seed values: the report's error "
                             "bars and verdicts then come from the spread over the seeds")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="pretraining steps of every method (default: the budget's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="pretrainings run at once (a many-core CPU; keep 1 on one "
                             "accelerator); with more than 1 every method is pretrained "
                             "before the probes start")
    return parser


def _other_seeds(spec: str, budget: Any) -> list[dict[str, Any]]:
    """The probe values of the ``--seed_runs`` folders: finished runs of ``budget``'s
    settings with other pretraining seeds (each checked)."""
    others: list[dict[str, Any]] = []
    seeds = {budget.pretrain_seed}
    for out in [p.strip() for p in spec.split(",") if p.strip()]:
        results = read_json(os.path.join(out, "results.json"))
        if not results:
            raise ReproduceError(f"--seed_runs: {out} holds no results.json (a finished run)")
        settings = dict(results.get("budget_settings", {}))
        seed = settings.pop("pretrain_seed", 0)
        mine = json.loads(json.dumps(dataclasses.asdict(budget)))
        mine.pop("pretrain_seed")
        if settings != mine:
            raise ReproduceError(f"--seed_runs: {out} is a run of other budget settings")
        if seed in seeds:
            raise ReproduceError(f"--seed_runs: {out} repeats pretraining seed {seed}")
        seeds.add(seed)
        others.append({"out": out, "pretrain_seed": seed, "methods": {
            name: {key: row.get(key) for key in ("linear", "knn", "segmentation")}
            for name, row in results["methods"].items()}})
    return others


def _budget(args: argparse.Namespace) -> Budget:
    try:
        return parse_budget(args.budget)
    except ConfigArgError as e:
        raise ReproduceError(f"--budget={args.budget}: {e}") from None


def _seeded_table(args: argparse.Namespace) -> tuple[Budget, list[int], str, str, str, str]:
    """The checked arguments of a table over ``--seeds``: (budget, seeds, camvid,
    camvid_train, out, segmentation split); creates ``--out``."""
    budget = _budget(args)
    if args.num_steps is not None:
        if args.num_steps < 1:
            raise ReproduceError(f"--num_steps must be >= 1, got {args.num_steps}")
        budget = dataclasses.replace(budget, num_steps=args.num_steps)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ReproduceError(f"--seeds must be comma-separated ints, got {args.seeds!r}"
                             ) from None
    camvid = os.path.abspath(args.camvid)
    camvid_train = check_camvid(camvid)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    seg_split = "test" if os.path.isdir(os.path.join(camvid, "test", "images")) else "val"
    return budget, seeds, camvid, camvid_train, out, seg_split


def _table_command(args: argparse.Namespace, *extra: str) -> list[str]:
    return ["-m", "detcon_jax.reproduce", f"--table={args.table}", f"--camvid={args.camvid}",
            *extra, f"--out={args.out}", f"--budget={args.budget}", f"--seeds={args.seeds}"
            ] + ([f"--num_steps={args.num_steps}"] if args.num_steps else [])


def run_ablation_table(args: argparse.Namespace) -> dict[str, Any]:
    """``--table=ablation`` for parsed ``args``; returns what ``OUT/ablation.json`` holds."""
    budget, seeds, camvid, camvid_train, out, seg_split = _seeded_table(args)
    command = _table_command(args, f"--ablation_masks={args.ablation_masks}")
    return run_ablation(budget, camvid=camvid, camvid_train=camvid_train, out=out,
                        seeds=seeds, probe_seed=args.seed, segmentation_split=seg_split,
                        command=command, masks_sources=[
                            m.strip() for m in args.ablation_masks.split(",") if m.strip()])


def run_learned_table(args: argparse.Namespace) -> dict[str, Any]:
    """``--table=learned`` for parsed ``args``; returns what ``OUT/learned.json`` holds."""
    if not args.cifar10:
        raise ReproduceError("--cifar10 is required for --table=learned")
    budget, seeds, camvid, camvid_train, out, seg_split = _seeded_table(args)
    cifar_dir, _ = cifar_subset(os.path.abspath(args.cifar10), budget, out)
    return run_learned(budget, camvid=camvid, camvid_train=camvid_train, cifar_dir=cifar_dir,
                       out=out, seeds=seeds, probe_seed=args.seed, segmentation_split=seg_split,
                       command=_table_command(args, f"--cifar10={args.cifar10}"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every stage for parsed ``args``; returns the results written to results.json."""
    wall_start = time.perf_counter()
    budget = _budget(args)
    if not args.cifar10:
        raise ReproduceError("--cifar10 is required for --table=methods")
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be >= 1, got {args.jobs}")
    if args.num_steps is not None:
        if args.num_steps < 1:
            raise ReproduceError(f"--num_steps must be >= 1, got {args.num_steps}")
        budget = dataclasses.replace(budget, num_steps=args.num_steps)
    budget = dataclasses.replace(budget, pretrain_seed=args.pretrain_seed)
    other_seeds = _other_seeds(args.seed_runs, budget)  # checked before any stage runs
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - {m.name for m in METHODS})
    if unknown:
        raise ReproduceError(f"--methods: unknown method(s) {unknown}; choose from "
                             f"{[m.name for m in METHODS]}")
    chosen = [m for m in METHODS if m.name in names]
    camvid = os.path.abspath(args.camvid)
    camvid_train = check_camvid(camvid)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run_info_path = os.path.join(out, "run_info.json")
    previous = read_json(run_info_path)
    settings = dataclasses.asdict(budget)
    if previous and (previous.get("budget"), previous.get("num_steps", budget.num_steps),
                     previous.get("pretrain_seed", 0)) != (
            budget.name, budget.num_steps, budget.pretrain_seed):
        raise ReproduceError(f"--out={out} holds a run of budget {previous.get('budget')!r} "
                             f"with {previous.get('num_steps')} steps and pretraining seed "
                             f"{previous.get('pretrain_seed', 0)}, not {budget.name!r} with "
                             f"{budget.num_steps} and {budget.pretrain_seed}; use another --out")
    # JSON holds tuples as lists: compare through it.
    stored = previous.get("budget_settings", json.loads(json.dumps(settings)))
    changed = sorted(k for k, v in json.loads(json.dumps(settings)).items() if stored.get(k) != v)
    if changed:
        raise ReproduceError(f"--out={out} holds a run of budget {budget.name!r} with other "
                             f"settings ({', '.join(f'{k}={stored.get(k)}' for k in changed)}); "
                             "use another --out")
    write_json(run_info_path, {"budget": budget.name, "num_steps": budget.num_steps,
                               "pretrain_seed": budget.pretrain_seed,
                               "budget_settings": settings,
                               "camvid": camvid,
                               "cifar10": os.path.abspath(args.cifar10)})
    cifar_dir, cifar_counts = cifar_subset(os.path.abspath(args.cifar10), budget, out)
    seg_split = "test" if os.path.isdir(os.path.join(camvid, "test", "images")) else "val"
    num_pretrain = len([p for p in os.listdir(os.path.join(camvid_train, "images"))
                        if not p.startswith(".")])
    num_seg_test = len(os.listdir(os.path.join(camvid, seg_split, "images")))
    log(f"budget {budget.name}: {len(chosen)} methods, {budget.num_steps} steps at "
        f"{budget.image_size} px, batch {budget.batch_size}; CamVid train {num_pretrain} "
        f"images; CIFAR-10 {cifar_counts['train']} / {cifar_counts['test']}; CamVid probe on "
        f"{seg_split}")

    if args.jobs > 1:
        # Pretrain first, several at once; the loop below then finds them finished.
        trainable = [m for m in chosen if m.method is not None]
        log(f"pretraining {len(trainable)} methods, {args.jobs} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_training, budget, m, camvid_train, os.path.join(out, m.name))
                       for m in trainable]
            for future in futures:
                future.result()
    rows: dict[str, dict[str, Any]] = {}
    for method in chosen:
        stage_start = time.perf_counter()
        workdir = os.path.join(out, method.name)
        if method.method is None:
            info = save_initial_state(budget, method, camvid_train, workdir)
            step = 0
        else:
            info = run_training(budget, method, camvid_train, workdir)
            step = budget.num_steps
        evaluation = evaluate(budget, method, workdir, step, cifar_dir, camvid, args.seed)
        rows[method.name] = {
            "label": method.label, "method": method.method, "masks": method.masks,
            "workdir": workdir, "train_command": info.get("command"),
            "train_time_s": info.get("train_time_s"), "steps": step,
            "final_loss": final_loss(workdir),
            "linear": evaluation["linear"]["top1"], "knn": evaluation["knn"]["top1"],
            "segmentation": evaluation["segmentation"]["miou"],
            "segmentation_pixel_accuracy": evaluation["segmentation"]["pixel_accuracy"],
            "evaluation": evaluation, "paper": method.paper,
        }
        log(f"{method.name}: stage done in {duration(time.perf_counter() - stage_start)} "
            f"(linear {rows[method.name]['linear']:.2f}%, k-NN {rows[method.name]['knn']:.2f}%,"
            f" seg mIoU {rows[method.name]['segmentation']:.2f}%)")

    splits = {
        "pretrain": f"CamVid train ({num_pretrain} images, {camvid_train})",
        "linear": f"CIFAR-10 train {cifar_counts['train']} → test {cifar_counts['test']}, "
                  f"{budget.cifar_image_size} px",
        "knn": f"CIFAR-10 train {cifar_counts['train']} → test {cifar_counts['test']}, "
               f"{budget.cifar_image_size} px",
        "segmentation": f"CamVid train {num_pretrain} → {seg_split} {num_seg_test}, "
                        f"{budget.seg_image_size} px",
    }
    results: dict[str, Any] = {
        "budget": budget.name,
        "budget_settings": dataclasses.asdict(budget),
        "command": shlex.join([os.path.basename(sys.executable), "-m", "detcon_jax.reproduce",
                               f"--camvid={args.camvid}", f"--cifar10={args.cifar10}",
                               f"--out={args.out}", f"--budget={args.budget}"]
                              + ([f"--num_steps={args.num_steps}"] if args.num_steps else [])
                              + ([f"--methods={args.methods}"] if len(chosen) < len(METHODS)
                                 else [])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "splits": splits,
        "segmentation_split": seg_split,
        "methods": rows,
    }
    results["other_seeds"] = other_seeds
    if len(chosen) == len(METHODS):
        results["claims"] = check_claims(seed_runs(results), budget=budget.name)
    results["wall_time_s"] = time.perf_counter() - wall_start
    # A resumed run's wall time covers only its own part; this sums every stage's time.
    results["stage_time_s"] = sum(
        (row.get("train_time_s") or 0.0) + sum(row["evaluation"].get("timings", {}).values())
        for row in rows.values())
    if len(chosen) == len(METHODS):
        results["plots"] = plot(results, out)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(render_markdown(results))
    write_json(os.path.join(out, "results.json"), results)
    log(f"done in {duration(results['wall_time_s'])}: {os.path.join(out, 'results.json')}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2: bad arguments, data or a failed stage)."""
    args = _parser().parse_args(argv)
    try:
        if paths.is_remote(args.out):
            # Checked first so that a missing bucket is one line; the report's plots and
            # log are written with local file APIs, so the folder itself must be local.
            paths.check_reachable(args.out, what="--out", writable=True)
            raise ReproduceError(f"--out={args.out}: reproduce writes its report to a local "
                                 "folder; give a local --out (the workdirs are small)")
        tables = {"ablation": run_ablation_table, "learned": run_learned_table}
        tables.get(args.table, run)(args)
    except (ReproduceError, FileNotFoundError, paths.UnreachablePathError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        return 2
    return 0
