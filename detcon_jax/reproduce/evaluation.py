"""The three probes of one encoder (CIFAR-10 linear and k-NN, CamVid segmentation), cached."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from detcon_jax.reproduce.budgets import PROBES, Budget, Method
from detcon_jax.reproduce.common import ReproduceError, duration, log, read_json, write_json


def evaluate(budget: Budget, method: Method, workdir: str, step: int, cifar_dir: str | None,
             camvid: str, seed: int, probes: Sequence[str] = PROBES) -> dict[str, Any]:
    """The ``probes`` of one encoder (default: all three), each cached in
    ``WORKDIR/eval.json``; ``cifar_dir`` may be None without the CIFAR-10 probes."""
    from detcon_jax.evaluate import common, features, knn, linear, segmentation

    cache_path = os.path.join(workdir, "eval.json")
    cache = read_json(cache_path)
    if cache.get("checkpoint_step") != step or cache.get("budget") != budget.name:
        cache = {"checkpoint_step": step, "budget": budget.name, "timings": {}}
    missing = [p for p in probes if p not in cache]
    if not missing:
        log(f"evaluate {method.name}: cached in {cache_path}; skipped")
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
        log(f"evaluate {method.name}: CIFAR-10 k-NN top-1 {top1:.2f}%")
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
        write_json(cache_path, cache)
        log(f"evaluate {method.name}: CIFAR-10 linear top-1 {result['top1']:.2f}% "
            f"({duration(cache['timings']['cifar10_s'])} for both CIFAR-10 probes)")
    if "segmentation" in missing:
        start = time.perf_counter()
        output = os.path.join(workdir, "segmentation.json")
        argv = ["--mode=probe", f"--checkpoint={workdir}", f"--step={step}", f"--data={camvid}",
                f"--image_size={budget.seg_image_size}", f"--epochs={budget.seg_epochs}",
                f"--augment_passes={budget.seg_augment_passes}",
                f"--batch_size={budget.seg_batch_size}", f"--seed={seed}", f"--output={output}"]
        code = segmentation.main(argv)
        if code != 0:
            raise ReproduceError(f"segmentation probe of {method.name} failed (exit status "
                                 f"{code}; arguments {' '.join(argv)})")
        result = read_json(output)
        cache["segmentation"] = {
            key: result[key] for key in ("miou", "pixel_accuracy", "per_class_iou", "data",
                                         "train_split", "test_split", "num_train",
                                         "image_size", "epochs", "augment_passes")}
        cache["segmentation"]["command"] = shlex.join(
            [sys.executable, "-m", "detcon_jax.evaluate.segmentation", *argv])
        cache["timings"]["segmentation_s"] = time.perf_counter() - start
        write_json(cache_path, cache)
        log(f"evaluate {method.name}: CamVid {result['test_split']} mIoU "
            f"{result['miou']:.2f}% ({duration(cache['timings']['segmentation_s'])})")
    del backbone
    return cache
