"""Picture tool: a PNG of images with their masks and what the loss sees of their two views.

Usage::

  python -m detcon_jax.visualize --source=skimage --mask_source=fh --num_images=4 \\
      --output=/tmp/detcon_masks.png
  python -m detcon_jax.visualize --data_dir=../shared/data/camvid/train --mask_source=gt
  python -m detcon_jax.visualize --config=experiments/detcon_b_camvid.py \\
      --data_dir=../shared/data/camvid/train

Each row shows the original image and the image with its mask, then the panel the
TensorBoard image summaries of a training run show (`mask_pictures.loss_panel`): view 1
and view 2 after the crop and the on-device photometric augmentations, each with its mask
and its loss grid (the masks on the feature grid the loss pools over, the sampled ids, and
which of them the other view drew too). A mask id has the same colour in every panel.

``--config=FILE.py[:ARG]`` (a training config, as ``train --config``) takes the data, mask
and augmentation settings from it; the flags given beside it override them.

Learned masks (``masks.source='learned'``, docs/learned_masks.md) come from a training run's
discovery network: ``--checkpoint=WORKDIR`` (with the run's ``--config``; ``--step``, default
the newest) restores its state, and the views' masks are the cluster maps the train step at
that state computes (same network, block group, k-means settings and key), carried into each
view; the second column is then the covering window with its cluster map. They are drawn
even for a state still in the bootstrap phase (whose step trains on the bootstrap masks).
Without ``--checkpoint`` the state is the config's initial one: a random discovery network.

  python -m detcon_jax.visualize --config=experiments/detcon_b_camvid.py:learned \
      --data_dir=../shared/data/camvid/train --checkpoint=/tmp/detcon_camvid_learned
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from PIL import Image

from detcon_jax import config as config_lib
from detcon_jax import configs, discovery, mask_pictures, paths
from detcon_jax import data as data_lib
from detcon_jax import step as step_lib
from detcon_jax.configs import loading

__all__ = ["COLUMNS", "LEARNED_COLUMNS", "main", "render_rows", "visualize"]

COLUMNS = ("image", "image + mask", *mask_pictures.LOSS_PANEL_COLUMNS)
# masks.source='learned': the second column is the discovery network's input and clusters.
LEARNED_COLUMNS = ("image", "cover + clusters", *mask_pictures.LOSS_PANEL_COLUMNS)
EXIT_CONFIG_ERROR = 2
# Flag -> config key; a flag left unset keeps the config's value.
_FLAG_KEYS = {
    "source": "data.source", "data_dir": "data.path", "split": "data.split",
    "tfds_name": "data.tfds_name", "image_size": "data.image_size",
    "fh_scale": "data.fh_scale", "fh_min_size": "data.fh_min_size",
    "mask_source": "masks.source", "grid_size": "masks.grid_size",
    "num_samples": "masks.num_samples",
}


def render_rows(examples: Sequence[dict], config: Any, *, tile: int = 224,
                seed: int = 0, state: step_lib.TrainState | None = None) -> np.ndarray:
    """Renders examples (``image`` bytes/uint8, ``mask`` uint8 ``[H, W, 1]``) as a grid.

    The views are cropped as in training (``data.two_views``) and augmented, masked and
    sampled by the train step's own function (`step.make_loss_inputs`) with the settings of
    ``config`` (a training config: ``data.image_size``, ``masks``, ``augment``). For
    ``masks.source='learned'``, ``state`` (required) is the training state whose discovery
    network makes the masks (see the module docstring), with its own step key. Returns uint8
    ``[header + N * tile, len(COLUMNS) * tile, 3]``.
    """
    size = config.data.image_size
    learned = config.masks.source == "learned"
    if learned and state is None:
        raise ValueError("render_rows: masks.source='learned' needs the training state")
    cover_size = config.masks.learned.image_size if learned else None
    keys = ("view1", "view2", "mask1", "mask2") + (
        ("cover", "cover_box1", "cover_box2", "cover_flip1", "cover_flip2") if learned else ())
    images, batch = [], {k: [] for k in keys}
    for r, ex in enumerate(examples):
        images.append(data_lib.decode_image(ex["image"]).numpy())
        views = data_lib.two_views(images[-1], ex["mask"], image_size=size, cover_size=cover_size,
                                   seed=tf.constant([seed, r], tf.int64))
        for key in batch:
            batch[key].append(views[key].numpy())
    batch = {k: np.stack(v) for k, v in batch.items()}
    if learned:
        # The learned masks themselves, also in a state still in the bootstrap phase.
        config = config.copy_and_resolve_references()
        config.masks.learned.bootstrap_steps = 0
        key = step_lib.step_key(state)
        clusters = discovery.cluster_maps(config, state, batch["cover"])
    else:
        key = jax.random.PRNGKey(seed)
    inputs = jax.device_get(jax.jit(step_lib.make_loss_inputs(config, num_images=len(images)))(
        key, batch, state))
    panel = mask_pictures.loss_panel(
        (inputs["view1"], inputs["view2"]), (inputs["mask1"], inputs["mask2"]),
        (inputs["cells1"], inputs["cells2"]), (inputs["ids1"], inputs["ids2"]), tile=tile)
    rows = []
    for r, (image, ex, loss_row) in enumerate(zip(images, examples, panel, strict=True)):
        if learned:
            cover = batch["cover"][r]
            second = mask_pictures.overlay(
                cover, discovery.upsample_ids(clusters[r], *cover.shape[:2]))
        else:
            second = mask_pictures.overlay(image / 255.0, np.asarray(ex["mask"])[..., 0])
        rows.append(np.concatenate([
            mask_pictures.fit(image, tile), mask_pictures.fit(second, tile), loss_row], axis=1))
    return mask_pictures.with_header(np.stack(rows), LEARNED_COLUMNS if learned else COLUMNS,
                                     legend=mask_pictures.LOSS_PANEL_LEGEND)


def visualize(output: str | os.PathLike, config: Any, *, num_images: int = 4,
              tile: int = 224, seed: int = 0, checkpoint: str | None = None,
              step: int | None = None) -> str:
    """Writes the PNG grid for the first ``num_images`` of ``config``'s data source (a
    training config: ``data``, ``masks``, ``augment``); returns its path (local or a URI).

    ``checkpoint``, ``step``: for ``masks.source='learned'``, the training run (workdir) and
    step whose discovery network makes the masks (None: the config's initial state).
    """
    state = None
    if config.masks.source == "learned":
        state = discovery.load_state(config, checkpoint, step=step)
    ds = data_lib.source_dataset(config.data, config.masks, stats=data_lib.PipelineStats(),
                                 seed=seed)
    examples = [{k: v.numpy() for k, v in ex.items()} for ex in ds.take(num_images)]
    if not examples:
        raise ValueError(f"source {config.data.source!r} yielded no images")
    grid = render_rows(examples, config, tile=tile, seed=seed, state=state)
    path = paths.as_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(grid).save(f, format="PNG")
    return str(output)


def data_dir_error(path: str, source: str, flag: str) -> str | None:
    """The one-line error (with the fix) for a data directory ``source`` cannot read, or
    None. ``flag``: how the user gave it (``--data_dir`` or ``config key 'data.path'``)."""
    if not data_lib.data_dir_exists(path):
        return (f"{flag}={path}: directory not found (give an existing folder, e.g. "
                "../shared/data/camvid/train)")
    if source != "folder" or tf.io.gfile.isdir(paths.join(path, "images")):
        return None
    splits = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(path)
                    if tf.io.gfile.isdir(paths.join(path, d, "images")))
    if splits:
        split = "train" if "train" in splits else splits[0]
        return (f"{flag}={path} has no images/ folder but its split folders do "
                f"({', '.join(splits)}): use {flag}={paths.join(path, split)}")
    return (f"{flag}={path} has no images/ folder (a 'folder' source reads "
            "DIR/images/*.jpg|png and, for masks.source='gt', DIR/labels/NAME.png)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.visualize",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a training config FILE.py[:ARG] whose data, mask and "
                             "augmentation settings to show (default: the base config with "
                             "the source below)")
    parser.add_argument("--output", default="detcon_masks.png")
    parser.add_argument("--source", default=None, choices=tuple(data_lib.SOURCES),
                        help="data source (without --config: 'folder' when --data_dir is "
                             "given, else 'skimage')")
    parser.add_argument("--mask_source", default=None, choices=data_lib.MASK_SOURCES,
                        help="(without --config: 'fh')")
    parser.add_argument("--data_dir", default=None, help="data.path: e.g. a folder with "
                        "images/ (and labels/), or the TFRecord shards' folder")
    parser.add_argument("--split", default=None)
    parser.add_argument("--tfds_name", default=None)
    parser.add_argument("--image_size", type=int, default=None,
                        help="(without --config: 224)")
    parser.add_argument("--grid_size", type=int, default=None)
    parser.add_argument("--num_samples", type=int, default=None, help="mask ids per view")
    parser.add_argument("--fh_scale", type=float, default=None)
    parser.add_argument("--fh_min_size", type=int, default=None)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--tile", type=int, default=224, help="panel side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    discovery.add_checkpoint_flags(parser)
    return parser


def build_config(args: argparse.Namespace) -> Any:
    """The training config the picture shows: ``--config``'s (or the base config with the
    picture tool's defaults), with the given flags on top; validated.

    Raises:
      ConfigError: one line naming the flag, key or path, with the fix.
    """
    if args.config:
        config = loading.load(args.config)
    else:
        config = configs.get_config()
        config.data.source = "folder" if args.data_dir else "skimage"
    overrides = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()
                 if getattr(args, flag) is not None}
    loading.apply_overrides(config, overrides)
    if (args.checkpoint is not None or args.step is not None) and \
            config.masks.source != "learned":
        raise config_lib.ConfigError(
            f"--checkpoint/--step: only masks.source='learned' reads a checkpoint (its "
            f"discovery network); this config's masks.source is {config.masks.source!r}")
    if not args.config and config.masks.source == "none":
        config.method = "byol"  # the one-mask method of the base config's family
    if config.data.path:
        flag = "--data_dir" if args.data_dir is not None else "config key 'data.path'"
        error = data_dir_error(config.data.path, config.data.source, flag)
        if error:
            raise config_lib.ConfigError(error)
    config_lib.validate(config)
    if args.num_images < 1 or args.tile < 8:
        raise config_lib.ConfigError("--num_images must be >= 1 and --tile >= 8")
    return config


def main(argv: Sequence[str] | None = None) -> str:
    """Writes the picture; a bad flag, config or data path is one line and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        config = build_config(args)
        path = visualize(args.output, config, num_images=args.num_images, tile=args.tile,
                         seed=args.seed, checkpoint=args.checkpoint, step=args.step)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    print(path)
    return path


if __name__ == "__main__":
    main()
