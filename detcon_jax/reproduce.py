"""Small-scale reproduction of the paper's comparisons: pretrain six methods, probe all seven.

    python -m detcon_jax.reproduce --camvid=DIR --cifar10=DIR --out=DIR [--budget=small]

``--out`` may be a bucket (``gs://...``); its workdirs are then the trainings' workdirs.

Pretrains, with the same model, data, step budget and optimiser, on the CamVid ``train``
images (``DIR/train/images``; ``DIR/train/labels`` give the ground-truth masks):

==================  =========  ==============================================
``detcon_b_gt``     DetCon-B   CamVid ground-truth label maps as masks
``detcon_b_fh``     DetCon-B   Felzenszwalb-Huttenlocher masks (computed once)
``detcon_b_grid``   DetCon-B   4 x 4 grid (spatial heuristic) masks
``detcon_s_gt``     DetCon-S   ground-truth masks
``byol``            BYOL       one whole-image mask
``simclr``          SimCLR     one whole-image mask
``random``          --         no training: the shared initial online network
==================  =========  ==============================================

then evaluates every encoder with three probes: the CIFAR-10 linear probe and weighted k-NN
(``detcon_jax.evaluate.linear`` / ``knn``, on one set of frozen features) and the CamVid
segmentation linear probe (``detcon_jax.evaluate.segmentation --mode=probe``, scored on
``test/`` when the CamVid folder has one, else ``val/``). Writes ``OUT/results.json``,
``OUT/results.md`` (every number with its data split and the paper's corresponding claim),
``OUT/loss_curves.png`` and ``OUT/probes.png``.

Every pretraining is the training CLI run as a subprocess, exactly as a user would run it:
``python -m detcon_jax.train --config=experiments/detcon_b_camvid.py:ARG --workdir=OUT/NAME
--config.KEY=VALUE ...`` (the overrides are the budget's; the command is printed and stored
in ``results.json``). The random-initialisation baseline is the initial state of that config
(the online network every BYOL-style run starts from), saved as a step-0 checkpoint.

``--pretrain_seed=N`` seeds every pretraining and the random-init baseline (the probes keep
``--seed``): repeat a run with other values to see the pretraining-seed noise.

``--jobs=N`` runs N pretrainings at once (each is its own process; useful on a many-core CPU,
where one XLA:CPU program does not use every core).

Resuming: a run that is interrupted can be started again with the same arguments. Methods
whose workdir holds the final checkpoint are not trained again (an unfinished one resumes
from its newest checkpoint), and probe results cached in ``OUT/NAME/eval.json`` are reused.

Budgets (``--budget``):

* ``tiny``: 32 px, a tiny ResNet-18 (one basic block of 16 channels per group), 2 steps,
  2-epoch probes; for the end-to-end test (about a minute on 2 CPU cores with a few images).
* ``small`` (default): what a CPU can run in under an hour (measured on 2 shared cores):
  the CamVid experiment's half-width ResNet-18 (32-64-128-256 channels) with 512 -> 128 MLPs,
  96 px crops, batch 16, 300 steps each; learning rate 1.0 (base 16 x 16/256) rather than
  the official base 0.2, which at batch 16 would barely move the weights in 300 steps (LARS
  scales each layer's step by lr x 1e-3); target EMA base 0.9 rather than the CamVid
  config's 0.99: with the cosine increase to 1, 0.99 leaves about a fifth of the random
  initialisation in the target at the end of 300 steps (the product of the rates is
  exp(-1.5)) and BYOL then largely distils a random network, while 0.9 makes the target
  follow the online network about ten steps behind; probes: CIFAR-10 2,000 train / 1,000 test images
  (the first 200 / 100 per class in file order) upsampled to 96 px, linear probe 100 epochs
  on centre-crop features with a 5-rate sweep, k-NN k=20 T=0.07; CamVid probe at 128 px, 50
  epochs, 2 random-crop passes.
* ``full``: what a GPU would run (not run by this project): ResNet-50 at 224 px with the
  official 4096 -> 256 heads, batch 128, 5,000 steps (about 1,700 CamVid epochs), LR 1.0;
  probes on all CIFAR-10 images at 128 px with 10 augmented passes, CamVid at 224 px with 4
  passes. Expect a few GPU hours for the six pretrainings.

Deviations from the paper's protocol, all for scale: pretraining on 367 street scenes instead
of ImageNet/COCO, a few hundred steps instead of hundreds of thousands, and linear probes
instead of fine-tuned Mask R-CNN / FCN transfer. The numbers are ours; the paper's claims are
quoted beside them only qualitatively.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from detcon_jax import paths
from detcon_jax.config import ConfigError

__all__ = [
    "BUDGETS",
    "METHODS",
    "Budget",
    "Method",
    "ReproduceError",
    "check_claims",
    "main",
    "render_markdown",
    "train_command",
    "train_overrides",
]

EXPERIMENT = "detcon_b_camvid.py"
PROBES = ("linear", "knn", "segmentation")
PROBE_TITLES = {"linear": "CIFAR-10 linear top-1 (%)", "knn": "CIFAR-10 k-NN top-1 (%)",
                "segmentation": "CamVid seg. probe mIoU (%)"}


class ReproduceError(RuntimeError):
    """A bad argument, missing data or a failed stage; reported as one ``error:`` line."""


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison: a pretraining method and its mask source."""

    name: str
    label: str
    method: str | None  # None: the random-initialisation baseline (no training)
    masks: str
    paper: str  # the paper's corresponding claim (qualitative)


METHODS: tuple[Method, ...] = (
    Method("detcon_b_gt", "DetCon-B (GT masks)", "detcon_b", "gt",
           "paper: best masks of the mask ablation (human-annotated COCO masks); DetCon-B > "
           "BYOL on dense transfer"),
    Method("detcon_b_fh", "DetCon-B (FH masks)", "detcon_b", "fh",
           "paper: the main DetCon-B setting; > BYOL on COCO detection/instance seg., PASCAL "
           "VOC and Cityscapes segmentation"),
    Method("detcon_b_grid", "DetCon-B (grid masks)", "detcon_b", "grid",
           "paper: spatial-heuristic masks rank below FH and ground-truth masks"),
    Method("detcon_s_gt", "DetCon-S (GT masks)", "detcon_s", "gt",
           "paper: DetCon-S > SimCLR on dense transfer"),
    Method("byol", "BYOL", "byol", "none", "paper: the baseline of DetCon-B"),
    Method("simclr", "SimCLR", "simclr", "none", "paper: the baseline of DetCon-S"),
    Method("random", "Random init", None, "none",
           "not in the paper: the floor every pretrained method should beat"),
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Model, pretraining and probe sizes of one ``--budget``."""

    name: str
    # Pretraining (identical for every method).
    image_size: int
    batch_size: int
    num_steps: int
    warmup_epochs: int
    base_learning_rate: float
    base_ema: float
    depth: int
    blocks_per_group: tuple[int, int, int, int]
    channels_per_group: tuple[int, int, int, int]
    mlp_hidden_size: int
    projection_size: int
    checkpoint_every: int
    log_every: int
    # CIFAR-10 probes (None: every image of the split).
    cifar_train_per_class: int | None
    cifar_test_per_class: int | None
    cifar_image_size: int
    linear_epochs: int
    linear_learning_rates: tuple[float, ...]
    linear_augment_passes: int
    linear_batch_size: int
    knn_k: int
    # CamVid segmentation probe.
    seg_image_size: int
    seg_epochs: int
    seg_augment_passes: int
    seg_batch_size: int
    eval_batch_size: int
    # Not a size: the seed of every pretraining and of the random-init baseline, set per run
    # by ``--pretrain_seed``.
    pretrain_seed: int = 0


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny", image_size=32, batch_size=4, num_steps=2, warmup_epochs=0,
        base_learning_rate=16.0, base_ema=0.99, depth=18, blocks_per_group=(1, 1, 1, 1),
        channels_per_group=(16, 16, 16, 16), mlp_hidden_size=32, projection_size=16,
        checkpoint_every=2, log_every=1, cifar_train_per_class=3, cifar_test_per_class=2,
        cifar_image_size=32, linear_epochs=2, linear_learning_rates=(0.1, 1.0),
        linear_augment_passes=1, linear_batch_size=8, knn_k=5, seg_image_size=32,
        seg_epochs=2, seg_augment_passes=1, seg_batch_size=4, eval_batch_size=4),
    "small": Budget(
        name="small", image_size=96, batch_size=16, num_steps=300, warmup_epochs=1,
        base_learning_rate=16.0, base_ema=0.9, depth=18, blocks_per_group=(2, 2, 2, 2),
        channels_per_group=(32, 64, 128, 256), mlp_hidden_size=512, projection_size=128,
        checkpoint_every=50, log_every=10, cifar_train_per_class=200, cifar_test_per_class=100,
        cifar_image_size=96, linear_epochs=100, linear_learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0),
        linear_augment_passes=0, linear_batch_size=256, knn_k=20, seg_image_size=128,
        seg_epochs=50, seg_augment_passes=2, seg_batch_size=16, eval_batch_size=100),
    "full": Budget(
        name="full", image_size=224, batch_size=128, num_steps=5000, warmup_epochs=10,
        base_learning_rate=2.0, base_ema=0.99, depth=50, blocks_per_group=(3, 4, 6, 3),
        channels_per_group=(256, 512, 1024, 2048), mlp_hidden_size=4096, projection_size=256,
        checkpoint_every=500, log_every=50, cifar_train_per_class=None,
        cifar_test_per_class=None, cifar_image_size=128, linear_epochs=100,
        linear_learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0), linear_augment_passes=10,
        linear_batch_size=1024, knn_k=20, seg_image_size=224, seg_epochs=50,
        seg_augment_passes=4, seg_batch_size=16, eval_batch_size=128),
}


def _log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[reproduce {stamp}] {message}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def experiment_path() -> pathlib.Path:
    """``experiments/detcon_b_camvid.py`` of this checkout (the config every run starts from)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / EXPERIMENT
    if not path.is_file():
        raise ReproduceError(f"{path}: experiment config not found (run from a source checkout "
                             f"of detcon_jax)")
    return path


# ---------------------------------------------------------------------------------------------
# Configs and commands.


def _config_arg(method: Method) -> str:
    """The ``:ARG`` of the experiment file; BYOL/SimCLR override the mask source to 'none'."""
    return method.masks if method.masks in ("gt", "fh", "grid") else "gt"


def train_overrides(budget: Budget, method: Method, camvid_train: str) -> dict[str, Any]:
    """``config key -> value`` applied on top of ``experiments/detcon_b_camvid.py:ARG``."""
    return {
        "method": method.method or "detcon_b",
        "seed": budget.pretrain_seed,
        "masks.source": method.masks if method.method else "gt",
        "data.path": camvid_train,
        "data.image_size": budget.image_size,
        # A fixed element order: the reproduction gives the same numbers when run again.
        "data.deterministic": True,
        "batch_size": budget.batch_size,
        "num_steps": budget.num_steps,
        "optim.warmup_epochs": budget.warmup_epochs,
        "optim.base_learning_rate": budget.base_learning_rate,
        "optim.base_ema": budget.base_ema,
        "model.depth": budget.depth,
        "model.blocks_per_group": budget.blocks_per_group,
        "model.channels_per_group": budget.channels_per_group,
        "model.mlp_hidden_size": budget.mlp_hidden_size,
        "model.projection_size": budget.projection_size,
        "checkpoint.every_steps": budget.checkpoint_every,
        "checkpoint.keep": 1,
        "log_every_steps": budget.log_every,
    }


def _flag_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def train_command(budget: Budget, method: Method, camvid_train: str, workdir: str
                  ) -> list[str]:
    """The training CLI invocation of one method (``sys.executable -m detcon_jax.train ...``)."""
    command = [sys.executable, "-m", "detcon_jax.train",
               f"--config={experiment_path()}:{_config_arg(method)}", f"--workdir={workdir}"]
    for key, value in train_overrides(budget, method, camvid_train).items():
        command.append(f"--config.{key}={_flag_value(value)}")
    return command


def load_config(budget: Budget, method: Method, camvid_train: str) -> Any:
    """The same config the training CLI builds from `train_command`, built in-process."""
    from detcon_jax import config as config_lib

    path = experiment_path()
    spec = importlib.util.spec_from_file_location("detcon_b_camvid_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(_config_arg(method))
    for key, value in train_overrides(budget, method, camvid_train).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config_lib.validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# Data.


def _check_camvid(camvid: str) -> str:
    train = os.path.join(camvid, "train")
    for sub in ("images", "labels"):
        if not os.path.isdir(os.path.join(train, sub)):
            raise ReproduceError(f"--camvid={camvid}: {os.path.join(train, sub)} does not exist "
                                 f"(expected TRAIN/images/*.jpg and TRAIN/labels/*.png)")
    if not any(os.path.isdir(os.path.join(camvid, s, "images")) for s in ("test", "val")):
        raise ReproduceError(f"--camvid={camvid}: neither test/images nor val/images exists")
    return train


def _cifar_subset(cifar: str, budget: Budget, out: str) -> tuple[str, dict[str, int]]:
    """A folder of symlinks to the first N images per class (or ``cifar`` itself)."""
    counts: dict[str, int] = {}
    splits = {"train": budget.cifar_train_per_class, "test": budget.cifar_test_per_class}
    for split in splits:
        root = os.path.join(cifar, split)
        if not os.path.isdir(root):
            raise ReproduceError(f"--cifar10={cifar}: split folder {root} does not exist")
        if not any(os.path.isdir(os.path.join(root, c)) for c in os.listdir(root)):
            raise ReproduceError(f"--cifar10={cifar}: no class sub-folders in {root}")
    if all(v is None for v in splits.values()):
        for split in splits:
            root = os.path.join(cifar, split)
            counts[split] = sum(len(os.listdir(os.path.join(root, c))) for c in os.listdir(root)
                                if os.path.isdir(os.path.join(root, c)))
        return cifar, counts
    target = os.path.join(out, "data", f"cifar10_{splits['train']}x{splits['test']}")
    for split, per_class in splits.items():
        root = os.path.join(cifar, split)
        counts[split] = 0
        for name in sorted(os.listdir(root)):
            source = os.path.join(root, name)
            if not os.path.isdir(source):
                continue
            files = sorted(os.listdir(source))[:per_class]
            dest = os.path.join(target, split, name)
            os.makedirs(dest, exist_ok=True)
            for file in files:
                link = os.path.join(dest, file)
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(os.path.join(source, file)), link)
            counts[split] += len(files)
    return target, counts


# ---------------------------------------------------------------------------------------------
# Stages.


def final_checkpoint(workdir: str, step: int) -> str:
    """Where the checkpoint of ``step`` lives (it exists once that step is complete)."""
    return paths.join(workdir, "checkpoints", str(step), "state")


def _has_checkpoint(workdir: str, step: int) -> bool:
    """Whether ``workdir`` (local or a URI) holds a complete checkpoint of ``step``."""
    from detcon_jax import checkpoint

    return step in checkpoint.complete_steps(paths.join(workdir, "checkpoints"))


@contextlib.contextmanager
def _open_log(path: str) -> Iterator[TextIO]:
    """``path`` opened for appending; in a bucket, where objects cannot be appended to, a
    local file uploaded over it when the block ends."""
    if not paths.is_remote(path):
        paths.as_path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log:
            yield log
        return
    with paths.staged_file(path) as local, open(local, "w") as log:
        yield log


def _train(budget: Budget, method: Method, camvid_train: str, workdir: str) -> dict[str, Any]:
    """Runs (or skips, when finished) one pretraining; returns its bookkeeping."""
    command = train_command(budget, method, camvid_train, workdir)
    info: dict[str, Any] = {"command": shlex.join(command), "workdir": workdir}
    timing_path = paths.join(workdir, "reproduce_train.json")
    if _has_checkpoint(workdir, budget.num_steps):
        _log(f"train {method.name}: final checkpoint (step {budget.num_steps}) exists; skipped")
        info["train_time_s"] = _read_json(timing_path).get("train_time_s")
        return info
    _log(f"train {method.name}: {shlex.join(command)}")
    log_path = paths.join(workdir, "train.log")
    start = time.perf_counter()
    with _open_log(log_path) as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            log.write(line)
            match = re.search(r"(step \d+/\d+ .*)$", line)
            if match:
                print(f"    {method.name}: {match.group(1).strip()}", flush=True)
            elif line.startswith("error:"):
                print(f"    {method.name}: {line.strip()}", flush=True)
        code = process.wait()
    elapsed = time.perf_counter() - start
    if code != 0 or not _has_checkpoint(workdir, budget.num_steps):
        raise ReproduceError(f"training {method.name} failed (exit status {code}); see "
                             f"{log_path}")
    _write_json(timing_path, {"train_time_s": elapsed})
    _log(f"train {method.name}: done in {_duration(elapsed)} (log {log_path})")
    info["train_time_s"] = elapsed
    return info


def _save_initial_state(budget: Budget, method: Method, camvid_train: str,
                        workdir: str) -> dict[str, Any]:
    """The random-init baseline: the experiment's initial state as a step-0 checkpoint."""
    info: dict[str, Any] = {"workdir": workdir, "command": None, "train_time_s": 0.0}
    if _has_checkpoint(workdir, 0):
        _log(f"init {method.name}: step-0 checkpoint exists; skipped")
        return info
    import jax

    from detcon_jax import checkpoint as ckpt_lib
    from detcon_jax import config as config_lib
    from detcon_jax import step as step_lib

    start = time.perf_counter()
    config = load_config(budget, method, camvid_train)
    schedules = step_lib.make_schedules(config, total_steps=budget.num_steps, warmup_steps=0)
    optimizer = step_lib.make_optimizer(config, schedules)
    state = jax.jit(lambda key: step_lib.create_train_state(config, key, optimizer=optimizer))(
        jax.random.PRNGKey(config.seed))
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    checkpointer = ckpt_lib.Checkpointer(
        paths.join(workdir, "checkpoints"), every_steps=1, keep=1,
        signature=config_lib.model_signature(config))
    try:
        checkpointer.save(0, state, data_position=0, force=True)
    finally:
        checkpointer.close()
    _log(f"init {method.name}: initial state (seed {config.seed}) saved in "
         f"{_duration(time.perf_counter() - start)}")
    return info


def _read_json(path: str) -> dict[str, Any]:
    location = paths.as_path(path)
    return json.loads(location.read_text()) if location.is_file() else {}


def _write_json(path: str, value: Any) -> None:
    paths.write_json(path, value)


def _evaluate(budget: Budget, method: Method, workdir: str, step: int, cifar_dir: str,
              camvid: str, seed: int) -> dict[str, Any]:
    """The three probes of one encoder, each cached in ``WORKDIR/eval.json``."""
    from detcon_jax.evaluate import common, features, knn, linear, segmentation

    cache_path = paths.join(workdir, "eval.json")
    cache = _read_json(cache_path)
    if cache.get("checkpoint_step") != step or cache.get("budget") != budget.name:
        cache = {"checkpoint_step": step, "budget": budget.name, "timings": {}}
    missing = [p for p in PROBES if p not in cache]
    if not missing:
        _log(f"evaluate {method.name}: cached in {cache_path}; skipped")
        return cache
    backbone = None
    if "linear" in missing or "knn" in missing:
        start = time.perf_counter()
        backbone, _ = features.load_backbone(workdir, step=step)
        num_classes = len([c for c in os.listdir(os.path.join(cifar_dir, "train"))
                           if os.path.isdir(os.path.join(cifar_dir, "train", c))])
        data = common.ClassificationData(
            data=cifar_dir, source="folder", image_size=budget.cifar_image_size,
            batch_size=budget.eval_batch_size, crop_padding=0,
            num_classes=num_classes)
        train_x, train_y = data.features(backbone, split="train")
        test_x, test_y = data.features(backbone, split="test")
        split = {"data": cifar_dir, "train_split": "train", "test_split": "test",
                 "num_train": int(len(train_y)), "num_test": int(len(test_y)),
                 "image_size": budget.cifar_image_size}
        top1 = knn.knn_top1(train_x, train_y, test_x, test_y, k=budget.knn_k,
                            temperature=0.07, num_classes=num_classes)
        cache["knn"] = {"top1": top1, "k": budget.knn_k, "temperature": 0.07, **split}
        _log(f"evaluate {method.name}: CIFAR-10 k-NN top-1 {top1:.2f}%")
        probe_x = train_x
        if budget.linear_augment_passes:
            probe_x = data.augmented_features(backbone, split="train",
                                              passes=budget.linear_augment_passes, seed=seed)
        result = linear.linear_probe_protocol(
            probe_x, train_y, test_x, test_y, heldout_x=train_x,
            learning_rates=budget.linear_learning_rates, seed=seed, num_classes=num_classes,
            num_epochs=budget.linear_epochs, batch_size=budget.linear_batch_size)
        cache["linear"] = {"top1": result["top1"], "learning_rate": result["learning_rate"],
                           "sweep": result["sweep"], "epochs": budget.linear_epochs,
                           "augment_passes": budget.linear_augment_passes, **split}
        cache["timings"]["cifar10_s"] = time.perf_counter() - start
        _write_json(cache_path, cache)
        _log(f"evaluate {method.name}: CIFAR-10 linear top-1 {result['top1']:.2f}% "
             f"({_duration(cache['timings']['cifar10_s'])} for both CIFAR-10 probes)")
    if "segmentation" in missing:
        start = time.perf_counter()
        output = paths.join(workdir, "segmentation.json")
        argv = ["--mode=probe", f"--checkpoint={workdir}", f"--step={step}", f"--data={camvid}",
                f"--image_size={budget.seg_image_size}", f"--epochs={budget.seg_epochs}",
                f"--augment_passes={budget.seg_augment_passes}",
                f"--batch_size={budget.seg_batch_size}", f"--seed={seed}", f"--output={output}"]
        code = segmentation.main(argv)
        if code != 0:
            raise ReproduceError(f"segmentation probe of {method.name} failed (exit status "
                                 f"{code}; arguments {' '.join(argv)})")
        result = _read_json(output)
        cache["segmentation"] = {
            key: result[key] for key in ("miou", "pixel_accuracy", "per_class_iou", "data",
                                         "train_split", "test_split", "num_train",
                                         "image_size", "epochs", "augment_passes")}
        cache["segmentation"]["command"] = shlex.join(
            [sys.executable, "-m", "detcon_jax.evaluate.segmentation", *argv])
        cache["timings"]["segmentation_s"] = time.perf_counter() - start
        _write_json(cache_path, cache)
        _log(f"evaluate {method.name}: CamVid {result['test_split']} mIoU "
             f"{result['miou']:.2f}% ({_duration(cache['timings']['segmentation_s'])})")
    del backbone
    return cache


# ---------------------------------------------------------------------------------------------
# Claims, report and plots.


def _metric(row: Mapping[str, Any], probe: str) -> float:
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
        better = [p for p in PROBES if _metric(row, p) > _metric(random_row, p)]
        claims.append({
            "claim": f"{method.label} beats random init on at least one probe",
            "paper": "implicit in the paper (every pretrained model transfers better than "
                     "training from scratch)",
            "ours": ", ".join(f"{p} {_metric(row, p):.2f} vs {_metric(random_row, p):.2f}"
                              for p in PROBES),
            "holds": bool(better)})

    def compare(a: str, b: str, probe: str, paper: str, op: str = ">") -> None:
        va, vb = _metric(methods[a], probe), _metric(methods[b], probe)
        holds = va > vb if op == ">" else va >= vb
        claims.append({"claim": f"{_label(a)} {op} {_label(b)} ({PROBE_TITLES[probe]})",
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


def _label(name: str) -> str:
    return next(m.label for m in METHODS if m.name == name)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}"


def render_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the setting, one table of every number and the claims checked."""
    splits = results["splits"]
    lines = [
        f"# DetCon reproduction at the `{results['budget']}` budget (our numbers)",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}; machine: {results['machine']}; wall time: "
        f"{_duration(results['wall_time_s'])} (this invocation; pretraining + probes of all "
        f"stages, summed over resumed invocations: {_duration(results['stage_time_s'])})",
        f"- Pretraining: {splits['pretrain']}; every method with the same model, steps and "
        f"optimiser (see `budget_settings` in results.json).",
        "",
        "| method | " + " | ".join(
            f"{PROBE_TITLES[p]}<br>{splits[p]}" for p in PROBES)
        + " | final pretraining loss | pretraining time | paper's corresponding claim |",
        "|---|" + "---|" * (len(PROBES) + 3),
    ]
    for method in METHODS:
        row = results["methods"][method.name]
        loss = row.get("final_loss")
        time_s = row.get("train_time_s")
        lines.append(
            f"| {method.label} | " + " | ".join(_fmt(row.get(p)) for p in PROBES)
            + f" | {_fmt(loss)} | {'—' if not time_s else _duration(time_s)} | "
            f"{method.paper} |")
    lines += ["", "Losses differ between objectives (BYOL's regression loss vs the "
              "contrastive ones), so compare loss values only within one method's curve.", "",
              "## The paper's claims checked on our numbers", "",
              "| claim | paper (qualitative) | ours | holds here? |", "|---|---|---|---|"]
    for claim in results["claims"]:
        lines.append(f"| {claim['claim']} | {claim['paper']} | {claim['ours']} | "
                     f"{'yes' if claim['holds'] else 'no'} |")
    lines += ["", "Plots: `loss_curves.png` (pretraining loss per method, from each "
              "workdir's `metrics.jsonl`), `probes.png` (each probe's metric per method).", ""]
    return "\n".join(lines)


def _plot(results: Mapping[str, Any], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detcon_jax import metrics as metrics_lib

    trained = [m for m in METHODS if m.method is not None]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, method in zip(axes.ravel(), trained, strict=True):
        path = paths.join(results["methods"][method.name]["workdir"], "metrics.jsonl")
        rows = [r for r in metrics_lib.read_jsonl(path) if r.get("loss") is not None]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
        ax.set_title(method.label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Pretraining loss on CamVid train ({results['budget']} budget)")
    fig.tight_layout()
    loss_path = paths.join(out, "loss_curves.png")
    with paths.staged_file(loss_path) as local:
        fig.savefig(local, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(PROBES), figsize=(15, 4.5), squeeze=False)
    labels = [m.label for m in METHODS]
    colours = ["C0", "C1", "C2", "C3", "C4", "C5", "0.6"]
    for ax, probe in zip(axes.ravel(), PROBES, strict=True):
        values = [_metric(results["methods"][m.name], probe) for m in METHODS]
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
    probe_path = paths.join(out, "probes.png")
    with paths.staged_file(probe_path) as local:
        fig.savefig(local, dpi=100)
    plt.close(fig)
    return [loss_path, probe_path]


def _final_loss(workdir: str) -> float | None:
    from detcon_jax import metrics as metrics_lib

    rows = [r for r in metrics_lib.read_jsonl(paths.join(workdir, "metrics.jsonl"))
            if r.get("loss") is not None]
    return float(rows[-1]["loss"]) if rows else None


def _machine() -> str:
    cores = os.cpu_count()
    try:
        import jax

        device = jax.devices()[0]
        kind = f"{device.platform} ({getattr(device, 'device_kind', '')})"
    except Exception:  # the report must not fail on an exotic runtime
        kind = "unknown device"
    return f"{platform.node()}, {platform.machine()}, {cores} CPU cores, JAX on {kind}"


# ---------------------------------------------------------------------------------------------
# CLI.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detcon_jax.reproduce",
        description="Pretrain DetCon-B (GT/FH/grid masks), DetCon-S, BYOL and SimCLR on "
                    "CamVid and probe them and a random init on CIFAR-10 and CamVid.")
    parser.add_argument("--camvid", required=True,
                        help="CamVid folder with train/{images,labels} and val/ or test/")
    parser.add_argument("--cifar10", required=True,
                        help="CIFAR-10 folder with train/CLASS/*.jpg and test/CLASS/*.jpg")
    parser.add_argument("--out", required=True, help="output folder (re-run to resume)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS),
                        help="comma-separated subset of the methods (default: all); the "
                             "report needs all of them")
    parser.add_argument("--seed", type=int, default=0, help="probe seed")
    parser.add_argument("--pretrain_seed", type=int, default=0,
                        help="seed of every pretraining (initialisation, augmentation, mask "
                             "sampling) and of the random-init baseline; repeat a run with "
                             "other values to see the pretraining-seed noise")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="pretraining steps of every method (default: the budget's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="pretrainings run at once (a many-core CPU; keep 1 on one "
                             "accelerator); with more than 1 every method is pretrained "
                             "before the probes start")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every stage for parsed ``args``; returns the results written to results.json."""
    wall_start = time.perf_counter()
    budget = BUDGETS[args.budget]
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be >= 1, got {args.jobs}")
    if args.num_steps is not None:
        if args.num_steps < 1:
            raise ReproduceError(f"--num_steps must be >= 1, got {args.num_steps}")
        budget = dataclasses.replace(budget, num_steps=args.num_steps)
    budget = dataclasses.replace(budget, pretrain_seed=args.pretrain_seed)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - {m.name for m in METHODS})
    if unknown:
        raise ReproduceError(f"--methods: unknown method(s) {unknown}; choose from "
                             f"{[m.name for m in METHODS]}")
    chosen = [m for m in METHODS if m.name in names]
    camvid = os.path.abspath(args.camvid)
    camvid_train = _check_camvid(camvid)
    out_path = paths.check_reachable(args.out, what="--out", writable=True)
    out = os.fspath(out_path)
    if not paths.is_remote(out_path):
        out_path.mkdir(parents=True, exist_ok=True)
    run_info_path = paths.join(out, "run_info.json")
    previous = _read_json(run_info_path)
    if previous and (previous.get("budget"), previous.get("num_steps", budget.num_steps),
                     previous.get("pretrain_seed", 0)) != (
            budget.name, budget.num_steps, budget.pretrain_seed):
        raise ReproduceError(f"--out={out} holds a run of budget {previous.get('budget')!r} "
                             f"with {previous.get('num_steps')} steps and pretraining seed "
                             f"{previous.get('pretrain_seed', 0)}, not {budget.name!r} with "
                             f"{budget.num_steps} and {budget.pretrain_seed}; use another --out")
    _write_json(run_info_path, {"budget": budget.name, "num_steps": budget.num_steps,
                                "pretrain_seed": budget.pretrain_seed,
                                "camvid": camvid,
                                "cifar10": os.path.abspath(args.cifar10)})
    # The CIFAR-10 subset is a folder of symbolic links: local even when --out is a bucket.
    links = (os.path.join(tempfile.gettempdir(), "detcon_jax_reproduce",
                          hashlib.sha1(out.encode()).hexdigest()[:12])
             if paths.is_remote(out) else out)
    cifar_dir, cifar_counts = _cifar_subset(os.path.abspath(args.cifar10), budget, links)
    seg_split = "test" if os.path.isdir(os.path.join(camvid, "test", "images")) else "val"
    num_pretrain = len([p for p in os.listdir(os.path.join(camvid_train, "images"))
                        if not p.startswith(".")])
    num_seg_test = len(os.listdir(os.path.join(camvid, seg_split, "images")))
    _log(f"budget {budget.name}: {len(chosen)} methods, {budget.num_steps} steps at "
         f"{budget.image_size} px, batch {budget.batch_size}; CamVid train {num_pretrain} "
         f"images; CIFAR-10 {cifar_counts['train']} / {cifar_counts['test']}; CamVid probe on "
         f"{seg_split}")

    if args.jobs > 1:
        # Pretrain first, several at once; the loop below then finds them finished.
        trainable = [m for m in chosen if m.method is not None]
        _log(f"pretraining {len(trainable)} methods, {args.jobs} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(_train, budget, m, camvid_train, paths.join(out, m.name))
                       for m in trainable]
            for future in futures:
                future.result()
    rows: dict[str, dict[str, Any]] = {}
    for method in chosen:
        stage_start = time.perf_counter()
        workdir = paths.join(out, method.name)
        if method.method is None:
            info = _save_initial_state(budget, method, camvid_train, workdir)
            step = 0
        else:
            info = _train(budget, method, camvid_train, workdir)
            step = budget.num_steps
        evaluation = _evaluate(budget, method, workdir, step, cifar_dir, camvid, args.seed)
        rows[method.name] = {
            "label": method.label, "method": method.method, "masks": method.masks,
            "workdir": workdir, "train_command": info.get("command"),
            "train_time_s": info.get("train_time_s"), "steps": step,
            "final_loss": _final_loss(workdir),
            "linear": evaluation["linear"]["top1"], "knn": evaluation["knn"]["top1"],
            "segmentation": evaluation["segmentation"]["miou"],
            "segmentation_pixel_accuracy": evaluation["segmentation"]["pixel_accuracy"],
            "evaluation": evaluation, "paper": method.paper,
        }
        _log(f"{method.name}: stage done in {_duration(time.perf_counter() - stage_start)} "
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
                               f"--out={args.out}", f"--budget={budget.name}"]
                              + ([f"--num_steps={args.num_steps}"] if args.num_steps else [])
                              + ([f"--methods={args.methods}"] if len(chosen) < len(METHODS)
                                 else [])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine(),
        "splits": splits,
        "segmentation_split": seg_split,
        "methods": rows,
    }
    if len(chosen) == len(METHODS):
        results["claims"] = check_claims(rows)
    results["wall_time_s"] = time.perf_counter() - wall_start
    # A resumed run's wall time covers only its own part; this sums every stage's time.
    results["stage_time_s"] = sum(
        (row.get("train_time_s") or 0.0) + sum(row["evaluation"].get("timings", {}).values())
        for row in rows.values())
    if len(chosen) == len(METHODS):
        results["plots"] = _plot(results, out)
        paths.write_text(paths.join(out, "results.md"), render_markdown(results))
    _write_json(paths.join(out, "results.json"), results)
    _log(f"done in {_duration(results['wall_time_s'])}: {paths.join(out, 'results.json')}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2: bad arguments, data or a failed stage)."""
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (ReproduceError, FileNotFoundError, ConfigError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
