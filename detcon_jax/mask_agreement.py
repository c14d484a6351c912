"""Mask agreement: how well a mask source's segments match the ground-truth segments.

The measure is the **mean best-overlap IoU**: for every ground-truth segment of an image (the
pixels of one label id, void ids excluded), the largest IoU with any predicted segment (the
pixels of one predicted id), averaged over all segments of all images (``mean``) and, as a
second number, averaged per image and then over images (``image_mean``). Only labelled pixels
count: void pixels are removed from both the ground-truth and the predicted segments before
the IoUs, so a predicted segment is not penalised for spilling into unlabelled regions.

Sources, on un-augmented images of a CamVid-layout folder (``images/``, ``labels/``):

- ``fh``: the config's Felzenszwalb-Huttenlocher masks (``data.fh_scale``,
  ``data.fh_min_size``), computed on the decoded full image as the input pipeline does;
- ``grid``: the pipeline's ``masks.grid_size`` x ``masks.grid_size`` grid over the image;
- ``learned``: the discovery network's cluster map (``detcon_jax.discovery``) of the whole
  image squashed to ``masks.learned.image_size`` (the bicubic resize of the covering window),
  upsampled (nearest: the cell under each pixel's centre) to the label resolution. The key is
  the state's step key, as in the train step, split over chunks of ``batch_size`` images.

Usage::

  python -m detcon_jax.mask_agreement --config=experiments/detcon_b_camvid.py:learned \\
      --data_dir=../shared/data/camvid/train --checkpoint=/tmp/detcon_camvid_learned \\
      --max_images=50 [--sources=learned,fh,grid] [--output=agreement.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from detcon_jax import config as config_lib
from detcon_jax import discovery, paths
from detcon_jax import step as step_lib
from detcon_jax.configs import loading

__all__ = ["SOURCES", "VOID_IDS", "agreement", "best_overlap_ious", "labelled_images",
           "main", "predicted_masks", "summarize"]

SOURCES = ("learned", "fh", "grid")
VOID_IDS = (11,)  # CamVid's "Unlabelled"
EXIT_CONFIG_ERROR = 2


def best_overlap_ious(predicted: np.ndarray, labels: np.ndarray,
                      void_ids: Sequence[int] = VOID_IDS) -> np.ndarray:
    """The best-overlap IoU of each ground-truth segment of one image, in label-id order.

    Args:
      predicted: integer ``[H, W]`` predicted segment ids.
      labels: integer ``[H, W]`` ground-truth label ids.
      void_ids: label ids that are no segment; their pixels are left out of every segment.

    Returns:
      float64 ``[G]``: for each of the G non-void label ids present, ``max_p |g & p| /
      |g | p|`` over the predicted segments p (restricted to labelled pixels).
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ in shape")
    valid = ~np.isin(labels, np.asarray(void_ids))
    gt_ids, gt = np.unique(labels[valid], return_inverse=True)
    _, pred = np.unique(predicted[valid], return_inverse=True)
    if gt_ids.size == 0:
        return np.zeros([0])
    # The contingency table of the labelled pixels: intersections of every (g, p) pair.
    inter = np.zeros([gt_ids.size, pred.max() + 1], np.int64)
    np.add.at(inter, (gt.ravel(), pred.ravel()), 1)
    union = inter.sum(1, keepdims=True) + inter.sum(0, keepdims=True) - inter
    return (inter / union).max(axis=1)


def summarize(per_image: Iterable[np.ndarray]) -> dict[str, Any]:
    """``mean`` (over all segments), ``image_mean`` (of the per-image means, over images with
    a segment), ``num_segments`` and ``num_images`` of per-image `best_overlap_ious`."""
    per_image = [np.asarray(x, np.float64) for x in per_image]
    kept = [x for x in per_image if x.size]
    every = np.concatenate(kept) if kept else np.zeros([0])
    return {"mean": float(every.mean()) if every.size else float("nan"),
            "image_mean": float(np.mean([x.mean() for x in kept])) if kept else float("nan"),
            "num_segments": int(every.size), "num_images": len(per_image)}


def labelled_images(config: Any, *, max_images: int | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image uint8 [H, W, 3], labels [H, W])`` of ``config.data``'s folder (``data.path``:
    ``images/`` with ``labels/``), in the source's order, at most ``max_images``."""
    from detcon_jax import data as data_lib

    masks = config.masks.copy_and_resolve_references()
    masks.source = "gt"
    ds = data_lib.source_dataset(config.data, masks, stats=data_lib.PipelineStats())
    if max_images is not None:
        ds = ds.take(max_images)
    return [(data_lib.decode_image(ex["image"]).numpy(), ex["mask"].numpy()[..., 0])
            for ex in ds]


def predicted_masks(config: Any, source: str, images: Sequence[np.ndarray], *,
                    state: step_lib.TrainState | None = None) -> Iterator[np.ndarray]:
    """Each image's ``source`` segment ids ``[H, W]`` at the image's resolution (module
    docstring), one by one; ``learned`` needs ``state`` (the training state of the discovery
    network)."""
    from detcon_jax import data as data_lib

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "learned" and state is None:
        raise ValueError("the learned source needs the training state")
    if source == "fh":
        for image in images:
            yield data_lib.felzenszwalb_numpy(image, config.data.fh_scale,
                                              config.data.fh_min_size)
        return
    if source == "grid":
        for image in images:
            yield data_lib.grid_mask(image.shape, config.masks.grid_size).numpy()[..., 0]
        return
    size, chunk = config.masks.learned.image_size, config.batch_size
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        inputs = np.stack([data_lib.whole_image(image, size).numpy() for image in part])
        for image, ids in zip(part, discovery.cluster_maps(config, state, inputs), strict=True):
            yield discovery.upsample_ids(ids, *image.shape[:2])


def agreement(config: Any, sources: Sequence[str],
              images: Sequence[tuple[np.ndarray, np.ndarray]], *,
              state: step_lib.TrainState | None = None,
              void_ids: Sequence[int] = VOID_IDS, progress: bool = False
              ) -> dict[str, dict[str, Any]]:
    """`summarize` of every source's best-overlap IoUs with the labels of ``images`` (pairs
    from `labelled_images`); ``progress``: a tqdm bar per source on stderr."""
    from tqdm import tqdm

    pixels = [image for image, _ in images]
    results = {}
    for source in sources:
        predicted = predicted_masks(config, source, pixels, state=state)
        bar = tqdm(zip(predicted, images, strict=True), total=len(images), unit="img",
                   desc=f"[mask_agreement] {source}", file=sys.stderr, disable=not progress)
        results[source] = summarize(best_overlap_ious(p, labels, void_ids)
                                    for p, (_, labels) in bar)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.mask_agreement",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="the training config FILE.py[:ARG] whose FH, grid and learned "
                             "settings to measure")
    parser.add_argument("--data_dir", required=True,
                        help="a CamVid-layout folder: images/ and labels/ (e.g. CAMVID/train)")
    discovery.add_checkpoint_flags(parser)
    parser.add_argument("--sources", default=None,
                        help="comma-separated subset of learned,fh,grid (default: all three "
                             "for a masks.source='learned' config, else fh,grid)")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--void_ids", default="11", help="label ids that are no segment")
    parser.add_argument("--output", default=None, help="also write the results as JSON")
    return parser


def _check(args: argparse.Namespace) -> tuple[Any, list[str], tuple[int, ...]]:
    config = loading.load(args.config)
    loading.apply_overrides(config, {"data.path": args.data_dir, "data.source": "folder"})
    config_lib.validate(config)
    learned = config.masks.source == "learned"
    sources = ([s.strip() for s in args.sources.split(",") if s.strip()] if args.sources
               else list(SOURCES if learned else SOURCES[1:]))
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise config_lib.ConfigError(f"--sources must be a subset of {SOURCES}, got "
                                     f"{args.sources!r}")
    if "learned" in sources and not learned:
        raise config_lib.ConfigError("--sources=learned needs a config with "
                                     "masks.source='learned' (e.g. detcon_b_camvid.py:learned)")
    if (args.checkpoint or args.step is not None) and "learned" not in sources:
        raise config_lib.ConfigError("--checkpoint/--step: only the learned source reads one")
    if args.max_images is not None and args.max_images < 1:
        raise config_lib.ConfigError(f"--max_images must be >= 1, got {args.max_images}")
    try:
        void_ids = tuple(int(v) for v in args.void_ids.split(",") if v.strip())
    except ValueError:
        raise config_lib.ConfigError(f"--void_ids must be comma-separated ints, got "
                                     f"{args.void_ids!r}") from None
    if not paths.as_path(paths.join(args.data_dir, "labels")).is_dir():
        raise config_lib.ConfigError(f"--data_dir={args.data_dir}: no labels/ folder (a "
                                     "CamVid-layout split: images/ and labels/)")
    return config, sources, void_ids


def main(argv: Sequence[str] | None = None) -> dict[str, Mapping[str, Any]]:
    """Prints (and with ``--output`` writes) the agreement of each source; a bad flag,
    config, path or checkpoint is one line and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        config, sources, void_ids = _check(args)
        state = None
        if "learned" in sources:
            state = discovery.load_state(config, args.checkpoint, step=args.step)
        images = labelled_images(config, max_images=args.max_images)
        if not images:
            raise config_lib.ConfigError(f"--data_dir={args.data_dir}: no images")
        results = agreement(config, sources, images, state=state, void_ids=void_ids,
                            progress=True)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    for source, r in results.items():
        print(f"{source}: mean best-overlap IoU {r['mean']:.4f} over {r['num_segments']} "
              f"segments (per image {r['image_mean']:.4f}, {r['num_images']} images)")
    if args.output:
        with paths.as_path(args.output).open("w") as f:
            json.dump({"sources": results, "config": args.config, "data_dir": args.data_dir,
                       "checkpoint": args.checkpoint, "step": args.step}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
