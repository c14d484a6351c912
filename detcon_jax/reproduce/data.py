"""The reproduction's data: the CamVid folder checked, the CIFAR-10 subset of a budget."""

from __future__ import annotations

import os

from detcon_jax.reproduce.budgets import Budget
from detcon_jax.reproduce.common import ReproduceError


def check_camvid(camvid: str) -> str:
    """``camvid/train`` after checking the layout (train images and labels, a test or val
    split); raises `ReproduceError` naming what is missing."""
    train = os.path.join(camvid, "train")
    for sub in ("images", "labels"):
        if not os.path.isdir(os.path.join(train, sub)):
            raise ReproduceError(f"--camvid={camvid}: {os.path.join(train, sub)} does not exist "
                                 f"(expected TRAIN/images/*.jpg and TRAIN/labels/*.png)")
    if not any(os.path.isdir(os.path.join(camvid, s, "images")) for s in ("test", "val")):
        raise ReproduceError(f"--camvid={camvid}: neither test/images nor val/images exists")
    return train


def cifar_subset(cifar: str, budget: Budget, out: str) -> tuple[str, dict[str, int]]:
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
