"""Plumbing shared by the evaluation CLIs: arguments, data sources, errors and JSON output.

Data sources (``--data``): an existing directory is an image folder (``DIR/SPLIT/CLASS/*.jpg``
for classification, ``DIR/SPLIT/{images,labels}`` for segmentation); anything else is taken
as the name of a TFDS data set already prepared in ``--tfds_data_dir`` (never downloaded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from detcon_jax import paths
from detcon_jax.evaluate.features import Backbone, extract, load_backbone, progress

__all__ = [
    "ClassificationData",
    "add_backbone_args",
    "add_classification_data_args",
    "backbone_from_args",
    "describe",
    "run_cli",
]


class UsageError(ValueError):
    """A bad argument or path; reported as one ``error: ...`` line with exit status 2."""


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--depth``, ``--step``, ``--seed``, ``--output`` (paths may be URIs)."""
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir / orbax checkpoint dir, Haiku .npy file (local "
                             "or gs://...), or random:DEPTH (random:DEPTHxWIDTH, random:tiny)")
    parser.add_argument("--depth", type=int, default=None,
                        help="ResNet depth of a Haiku checkpoint (default: inferred)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step of a workdir (default: newest)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inits and sampling")
    parser.add_argument("--output", default=None,
                        help="write the results as JSON here (local or gs://...)")


def add_classification_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data``, splits, image size, batch size, centre-crop padding, TFDS data dir."""
    parser.add_argument("--data", required=True,
                        help="image folder with SPLIT/CLASS/*.jpg, or a prepared TFDS name")
    parser.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (TFDS names)")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--crop_padding", type=int, default=32,
                        help="centre crop keeps S/(S+padding) of the short side (official "
                             "eval crop); 0 keeps it all")
    parser.add_argument("--batch_size", type=int, default=128, help="feature extraction batch")


def backbone_from_args(args: argparse.Namespace) -> tuple[Backbone, dict[str, Any]]:
    """`load_backbone` from parsed arguments, with a progress line."""
    backbone, info = load_backbone(args.checkpoint, depth=args.depth, step=args.step,
                                   seed=args.seed)
    progress(f'backbone {info["kind"]} from {args.checkpoint}: feature dim '
             f'{info["feature_dim"]}, structure {info["structure"]}')
    return backbone, info


def describe(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe summary of a backbone ``info``."""
    return json.loads(json.dumps(info, default=str))


def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # tfds raises its own DatasetNotFoundError and friends
        raise UsageError(f"--data={name}: not a directory and not a TFDS data set "
                         f"({type(err).__name__})") from err
    if not builder.is_prepared():
        raise UsageError(f'--data={name}: not a directory, and the TFDS data set is not '
                         f'prepared in {data_dir or "the default TFDS data dir"}')
    return builder


@dataclasses.dataclass
class ClassificationData:
    """A labelled image source (folder or TFDS) and its number of classes."""

    data: str
    source: str
    image_size: int
    batch_size: int
    crop_padding: int
    num_classes: int
    tfds_data_dir: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClassificationData:
        """Resolves ``--data``; raises `UsageError` naming the path when it is unusable."""
        kwargs = dict(data=args.data, image_size=args.image_size, batch_size=args.batch_size,
                      crop_padding=args.crop_padding, tfds_data_dir=args.tfds_data_dir)
        if os.path.isdir(args.data):
            for split in (args.train_split, args.test_split):
                if not os.path.isdir(os.path.join(args.data, split)):
                    raise UsageError(f"--data={args.data}: split folder "
                                     f"{os.path.join(args.data, split)} does not exist")
            root = pathlib.Path(args.data) / args.train_split
            classes = sorted(p.name for p in root.iterdir() if p.is_dir())
            if not classes:
                raise UsageError(f"--data={args.data}: no class sub-folders in {root}")
            return cls(source="folder", num_classes=len(classes), **kwargs)
        if os.sep in args.data and not args.tfds_data_dir and (
                args.data.startswith((".", os.sep, "~"))):
            raise UsageError(f"--data={args.data}: directory does not exist")
        builder = _tfds_builder(args.data, args.tfds_data_dir)
        label = builder.info.features["label"] if "label" in builder.info.features else None
        if label is None or not hasattr(label, "num_classes"):
            raise UsageError(f"--data={args.data}: TFDS data set has no class label feature")
        return cls(source="tfds", num_classes=int(label.num_classes), **kwargs)

    def dataset(self, split: str, *, crop: str = "center", seed: int | None = None):
        """One pass over ``split`` in file order, padded batches; ``crop`` is ``center``
        (default), ``resize`` or ``random`` (random crop + flip, reproducible with ``seed``)."""
        from detcon_jax import data

        return data.make_eval_dataset(
            self.source, batch_size=self.batch_size, stats=data.PipelineStats(),
            image_size=self.image_size,
            data_dir=self.tfds_data_dir if self.source == "tfds" else self.data,
            tfds_name=self.data if self.source == "tfds" else None, split=split,
            train=False, crop=crop, crop_padding=self.crop_padding, seed=seed)

    def features(self, backbone: Callable[[Any], Any], *, split: str,
                 crop: str = "center") -> tuple[np.ndarray, np.ndarray]:
        """Pooled eval-mode features and labels of one pass over ``split``."""
        return extract(backbone, self.dataset(split, crop=crop),
                       description=f"{split} features ({crop} crop)")

    def augmented_features(self, backbone: Callable[[Any], Any], *, split: str,
                           passes: int, seed: int) -> np.ndarray:
        """``[passes, N, C]`` pooled features of random-crop + flip views, image order fixed.

        Every pass visits the images in the same order as `features`, so rows of different
        passes belong to the same image; this lets the linear probe hold out a part of the
        training images during its learning-rate sweep.
        """
        out = []
        for index in range(passes):
            ds = self.dataset(split, crop="random", seed=seed * 100_003 + index + 1)
            x, _ = extract(backbone, ds, description=f"{split} features (augmented pass "
                                                     f"{index + 1}/{passes})")
            out.append(x)
        return np.stack(out)


def write_json(path: str, results: dict[str, Any]) -> None:
    """Writes ``results`` as indented JSON to a local path or a URI (whole or not at all)."""
    paths.write_json(path, results)


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict],
            argv: list[str] | None, summary: Callable[[dict], str]) -> int:
    """Parses ``argv``, runs, prints the summary (+ JSON to ``--output``); returns the status.

    Bad arguments and paths give one ``error: ...`` line and status 2.
    """
    args = parser.parse_args(argv)
    try:
        if args.output:  # before the work, not after it
            paths.check_reachable(args.output, what="--output", writable=True, is_file=True)
        results = run(args)
    except (UsageError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except ValueError as err:
        # Raised by the loaders with the offending file or key in the message.
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr, flush=True)
        return 2
    print(summary(results), flush=True)
    if args.output:
        write_json(args.output, results)
        progress(f"results written to {args.output}")
    return 0
