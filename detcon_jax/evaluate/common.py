"""Plumbing shared by the evaluation CLIs: arguments, data sources, errors and JSON output.

Data sources (``--data``): an existing directory is an image folder (``DIR/SPLIT/CLASS/*.jpg``
for classification, ``DIR/SPLIT/{images,labels}`` for segmentation); anything else is taken
as the name of a TFDS data set already prepared in ``--tfds_data_dir`` (never downloaded).

Feature cache (``--feature_cache``): extracted features go to disk (`cache`), keyed by the
backbone's variables and the data/preprocessing settings, so the linear probe and k-NN on one
checkpoint share one extraction. Default: ``WORKDIR/eval_features`` for a training workdir
(or ``random:WORKDIR``); for other sources (``random:DEPTH``, a ``.npy``) a temporary
directory removed at exit. With several processes the directory must be one every host sees
(the workdir, a bucket): each host writes its own rows and reads everyone's.

Every evaluator runs on a mesh of all devices of all processes (``--distributed`` or the
``DETCON_NUM_PROCESSES`` environment, as `detcon_jax.train`): ``--batch_size`` is the global
batch, split over the processes and their devices.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from detcon_jax import paths
from detcon_jax.evaluate.cache import FeatureCache
from detcon_jax.evaluate.features import Backbone, extract, load_backbone, progress

__all__ = [
    "ClassificationData",
    "Formatter",
    "add_backbone_args",
    "add_classification_data_args",
    "add_subset_args",
    "backbone_from_args",
    "cached_extract",
    "describe",
    "feature_cache_from_args",
    "host_share",
    "run_cli",
]


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default and keeps the description's line breaks (its cost)."""

    def add_argument(self, action: argparse.Action) -> None:
        # argparse prints a default only beside a help text: give the bare options one.
        if action.help is None and action.option_strings and action.default not in (
                None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"
        super().add_argument(action)


def host_share(count: int) -> int:
    """How many of ``count`` round-robin sharded items this process gets."""
    return len(range(jax.process_index(), count, jax.process_count()))


class UsageError(ValueError):
    """A bad argument or path; reported as one ``error: ...`` line with exit status 2."""


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--depth``, ``--step``, ``--seed``, ``--output`` (paths may be URIs)."""
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir / orbax checkpoint dir, Haiku .npy file (local "
                             "or gs://...), random:DEPTH (random:DEPTHxWIDTH, random:tiny), or "
                             "random:WORKDIR (that run's architecture at its step-0 init)")
    parser.add_argument("--depth", type=int, default=None,
                        help="ResNet depth of a Haiku checkpoint (None: inferred)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step of a workdir (None: newest)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inits and sampling")
    parser.add_argument("--output", default=None,
                        help="write the results as JSON here (local or gs://...)")
    parser.add_argument("--feature_cache", default=None,
                        help="feature cache directory (local or gs://...); None: "
                             "WORKDIR/eval_features for a training workdir, else a temporary "
                             "directory removed at exit")
    parser.add_argument("--distributed", action="store_true",
                        help="start jax.distributed (multi-process; see launch/README.md)")


def add_subset_args(parser: argparse.ArgumentParser, *, per_class: bool = True) -> None:
    """``--{train,test}_max_images`` (and ``--{train,test}_per_class``): evaluate on a subset.

    Per class: the first N images of every class; max images: at most N, taken round-robin
    over the classes (balanced), or the first N without classes.
    """
    for split in ("train", "test"):
        if per_class:
            parser.add_argument(f"--{split}_per_class", type=int, default=None,
                                help=f"keep the first N images per class of the {split} split")
        parser.add_argument(f"--{split}_max_images", type=int, default=None,
                            help=f"keep at most N images of the {split} split")


def check_subset_args(args: argparse.Namespace) -> None:
    """Subset flags are positive when given (`UsageError` otherwise)."""
    for name in ("train_per_class", "test_per_class", "train_max_images", "test_max_images"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")


def check_batch_size(batch_size: int, flag: str = "--batch_size") -> int:
    """This host's share of a global batch; `UsageError` unless it splits over the devices."""
    if batch_size < 1 or batch_size % jax.device_count():
        raise UsageError(f"{flag}={batch_size}: the global batch must be a positive multiple "
                         f"of the {jax.device_count()} devices")
    return batch_size // jax.process_count()


def feature_cache_from_args(args: argparse.Namespace, info: Mapping[str, Any]) -> FeatureCache:
    """The ``--feature_cache`` directory, or its default (see the module docstring)."""
    root = args.feature_cache
    if root is None and info.get("kind") == "orbax" and info.get("state_dir") is not None:
        checkpoints = paths.as_path(info["state_dir"]).parent.parent
        workdir = checkpoints.parent if checkpoints.name == "checkpoints" else checkpoints
        root = os.fspath(workdir / "eval_features")
    elif root is None and info.get("workdir"):
        root = paths.join(info["workdir"], "eval_features")
    elif root is None:
        if jax.process_count() > 1:
            raise UsageError(f"--checkpoint={args.checkpoint} has no workdir: give several "
                             f"processes a shared --feature_cache")
        root = tempfile.mkdtemp(prefix="detcon_jax_features_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    else:
        paths.check_reachable(root, what="--feature_cache", writable=True)
    return FeatureCache(root)


_BARRIERS = [0]


def _sync(name: str) -> None:
    """Every process waits here for the others.

    First at a barrier of JAX's coordination service (it waits up to 10 minutes), then in
    a collective: the CPU collectives' first call gives its peers only 30 s to join, which
    a loaded host starting late misses; after the barrier they all arrive together.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the runtime's client: no public API
    from jax.experimental import multihost_utils

    _BARRIERS[0] += 1
    client = getattr(jax_distributed.global_state, "client", None)
    if client is not None:
        client.wait_at_barrier(f"detcon_jax.evaluate.{_BARRIERS[0]}", 600_000)
    multihost_utils.sync_global_devices(f"detcon_jax.evaluate: {name}")


def cached_extract(forward: Callable[[Any], Any], dataset_fn: Callable[[], Any], *,
                   settings: Mapping[str, Any], cache: FeatureCache | None, total: int | None,
                   description: str, pool: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`extract` through the feature cache: read when complete, else stream, then read.

    ``settings`` (with ``forward.fingerprint``) is the cache key; without a ``cache`` or a
    fingerprint the features are extracted into memory. ``dataset_fn`` builds this host's
    batches; ``total`` is this host's image count (progress bar).
    """
    fingerprint = getattr(forward, "fingerprint", None)
    if cache is None or fingerprint is None:
        return extract(forward, dataset_fn(), pool=pool, total=total, description=description)
    entry = cache.entry({**settings, "backbone": fingerprint, "pool": pool})
    hit = entry.complete()
    _sync(f"{entry.path} checked")
    if hit:
        progress(f"{description}: cached in {entry.path}")
        return entry.read()
    writer = entry.writer(jax.process_index())
    extract(forward, dataset_fn(), pool=pool, total=total, description=description,
            sink=writer)
    _sync(f"{entry.path} written")
    if jax.process_index() == 0:
        entry.mark_complete(jax.process_count())
    _sync(f"{entry.path} complete")
    return entry.read()


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
    parser.add_argument("--batch_size", type=int, default=128,
                        help="global feature extraction batch (a multiple of the devices)")
    add_subset_args(parser)


def backbone_from_args(args: argparse.Namespace) -> tuple[Backbone, dict[str, Any]]:
    """`load_backbone` from parsed arguments, with a progress line (starts the multi-process
    runtime first when asked: it must precede every other JAX call)."""
    from detcon_jax import distributed

    if not jax.distributed.is_initialized():  # one runtime per process, several evaluators
        distributed.maybe_initialize(requested=getattr(args, "distributed", False))
    backbone, info = load_backbone(args.checkpoint, depth=args.depth, step=args.step,
                                   seed=args.seed)
    # The first cross-process collective sets up the CPU collectives, whose peers must
    # join within 30 s: make it here, where every host arrives after the same work (not
    # after building its own data pipeline).
    _sync("backbone loaded")
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
    subsets: dict[str, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)
    cache: FeatureCache | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, cache: FeatureCache | None = None
                  ) -> ClassificationData:
        """Resolves ``--data``; raises `UsageError` naming the path when it is unusable.

        ``batch_size`` is this host's share of the global ``--batch_size``."""
        check_subset_args(args)
        subsets = {split: (getattr(args, f"{role}_per_class", None),
                           getattr(args, f"{role}_max_images", None))
                   for role, split in (("train", args.train_split),
                                       ("test", args.test_split))}
        kwargs = dict(data=args.data, image_size=args.image_size,
                      batch_size=check_batch_size(args.batch_size),
                      crop_padding=args.crop_padding, tfds_data_dir=args.tfds_data_dir,
                      subsets=subsets, cache=cache)
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

        per_class, max_images = self.subsets.get(split, (None, None))
        return data.make_eval_dataset(
            self.source, batch_size=self.batch_size, stats=data.PipelineStats(),
            image_size=self.image_size,
            data_dir=self.tfds_data_dir if self.source == "tfds" else self.data,
            tfds_name=self.data if self.source == "tfds" else None, split=split,
            train=False, crop=crop, crop_padding=self.crop_padding, seed=seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            per_class=per_class, max_images=max_images)

    def num_examples(self, split: str) -> int:
        """Images of ``split`` after the subset, over all hosts (TFDS: an upper bound)."""
        from detcon_jax.data import evaluation, sources

        per_class, max_images = self.subsets.get(split, (None, None))
        if self.source == "folder":
            _, labels, _ = sources.class_folder_files(pathlib.Path(self.data) / split)
            return len(evaluation.subset_indices(labels, len(labels), per_class=per_class,
                                                 max_images=max_images))
        count = _tfds_builder(self.data, self.tfds_data_dir).info.splits[split].num_examples
        if per_class is not None:
            count = min(count, per_class * self.num_classes)
        return count if max_images is None else min(count, max_images)

    def _settings(self, split: str, crop: str, seed: int | None) -> dict[str, Any]:
        data = self.data if self.source == "tfds" else os.path.abspath(self.data)
        return {"task": "classification", "source": self.source, "data": data,
                "tfds_data_dir": self.tfds_data_dir, "split": split,
                "subset": self.subsets.get(split, (None, None)), "image_size": self.image_size,
                "crop": crop, "crop_padding": self.crop_padding, "seed": seed}

    def features(self, backbone: Callable[[Any], Any], *, split: str, crop: str = "center",
                 seed: int | None = None, description: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Pooled eval-mode features and labels of one pass over ``split`` (via the cache).

        ``backbone``: a `Backbone` (run on the mesh) or any forward with a ``fingerprint``
        (cached) or without one (extracted into memory).
        """
        forward = backbone.on_mesh(pool=True) if isinstance(backbone, Backbone) else backbone
        total = host_share(self.num_examples(split)) if self.source == "folder" else None
        return cached_extract(forward, lambda: self.dataset(split, crop=crop, seed=seed),
                              settings=self._settings(split, crop, seed), cache=self.cache,
                              total=total,
                              description=description or f"{split} features ({crop} crop)")

    def augmented_features(self, backbone: Callable[[Any], Any], *, split: str,
                           passes: int, seed: int) -> np.ndarray:
        """``[passes, N, C]`` pooled features of random-crop + flip views, image order fixed.

        Every pass visits the images in the same order as `features`, so rows of different
        passes belong to the same image; this lets the linear probe hold out a part of the
        training images during its learning-rate sweep.
        """
        out = []
        for index in range(passes):
            x, _ = self.features(backbone, split=split, crop="random",
                                 seed=seed * 100_003 + index + 1,
                                 description=f"{split} features (augmented pass "
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
    if jax.process_index() == 0:  # one report and one output file per job
        print(summary(results), flush=True)
        if args.output:
            write_json(args.output, results)
            progress(f"results written to {args.output}")
    # Every host leaves together (JAX's shutdown barrier waits for all of them).
    _sync("finished")
    return 0
