"""Image folders: ``DIR/images/*.jpg|png`` with optional ``DIR/labels/NAME.png`` id maps, and
the class-folder layout ``ROOT/CLASS/*.jpg|png`` of the evaluation sets."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from detcon_jax.data import decode
from detcon_jax.data.sources import base


def class_folder_files(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Image files, 0-based labels and class names of ``root/CLASS/*.jpg|png`` (sorted)."""
    root = pathlib.Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"eval folder: no class sub-folders in {root}")
    files, labels = [], []
    for index, cls in enumerate(classes):
        for path in base.list_images(root / cls):
            files.append(str(path))
            labels.append(index)
    if not files:
        raise FileNotFoundError(f"eval folder: no images under {root}/CLASS/")
    return files, labels, classes


class FolderSource(base.ListedSource):
    """``data_dir/images/*.jpg|png``; with ``gt_masks``, id maps ``data_dir/labels/NAME.png``
    (grayscale 8-bit, 16-bit with ids < 256, or palette; see
    ``decode.decode_label_png``)."""

    has_gt_masks = True

    def __init__(self, data_dir: str | os.PathLike, *, gt_masks: bool = False):
        self.root = pathlib.Path(data_dir)
        self.gt_masks = gt_masks

    @classmethod
    def from_config(cls, data: Any, masks: Any = None) -> FolderSource:
        if not data.path:
            raise ValueError("folder source needs data_dir (config key 'data.path')")
        return cls(data.path, gt_masks=masks is not None and masks.source == "gt")

    def num_examples(self) -> int:
        self.check()
        return len(base.list_images(self.root / "images"))

    def check(self) -> None:
        """The ``images/`` (and, for ground-truth masks, ``labels/``) folder must exist; a
        folder one level up (a data-set root holding ``train/``, ``val/``) says which
        sub-folder to give instead."""
        if not (self.root / "images").is_dir():
            splits = sorted(p.name for p in self.root.iterdir()
                            if (p / "images").is_dir()) if self.root.is_dir() else []
            fix = (f"; its sub-folder(s) {', '.join(splits)} have one: use e.g. "
                   f"--config.data.path={self.root / splits[0]}" if splits else "")
            raise FileNotFoundError(
                f"{self.root} has no images/ folder (the folder source reads "
                f"DIR/images/*.jpg|png and, for masks.source='gt', DIR/labels/NAME.png){fix}")
        if self.gt_masks and not (self.root / "labels").is_dir():
            raise FileNotFoundError(
                f"{self.root} has no labels/ folder, which masks.source='gt' reads "
                "(use --config.masks.source=fh to compute masks instead)")

    def listing(self, shard: base.Shard, *, shuffle_files: bool,
                seed: int) -> tuple[tf.data.Dataset, Callable[..., base.Example]]:
        del shuffle_files, seed  # one folder: the pipeline's example shuffle does the work
        root, image_dir = self.root, self.root / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"folder source: {image_dir} does not exist")
        images = base.list_images(image_dir)
        if not images:
            raise FileNotFoundError(f"folder source: no .jpg/.png images in {image_dir}")
        labels = []
        if self.gt_masks:
            for path in images:
                label = root / "labels" / (path.stem + ".png")
                if not label.is_file():
                    raise FileNotFoundError(
                        f"folder source: mask_source='gt' but {label} is missing")
                labels.append(str(label))
        labels = labels or [""] * len(images)
        pairs = shard.select(list(zip(map(str, images), labels, strict=True)),
                             f"folder {image_dir}")
        paths, label_paths = zip(*pairs, strict=True)
        ds = tf.data.Dataset.from_tensor_slices((list(paths), list(label_paths)))
        gt_masks = self.gt_masks

        def load(path, label_path):
            mask = None
            if gt_masks:
                mask = decode.decode_label_png(tf.io.read_file(label_path), label_path)
            return base.example(tf.io.read_file(path), mask, -1, path)

        return ds, load
