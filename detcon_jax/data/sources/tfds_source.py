"""TFDS data sets prepared in a local data dir (never downloaded), with their masks: COCO's
``panoptic_image``, per-instance masks (merged to one id map) or a VOC-style segmentation
image feature."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from detcon_jax.data.sources import base

_TFDS_MASK_KEYS = ("segmentation_mask", "segmentation_label", "label_image", "annotation",
                   "semantic_segmentation", "mask")


def tfds_mask(example: dict[str, Any]) -> tf.Tensor | None:
    """An id map uint8 ``[H, W, 1]`` from a TFDS example, or None when it has no masks.

    ``panoptic_image`` (COCO panoptic: id = R + 256 G + 65536 B) is renumbered to consecutive
    ids in order of appearance; stacked per-instance masks (``objects/segmentation`` or
    ``objects/mask``, ``[N, H, W(, 1)]``) are merged with instance k -> id k + 1 (later instances
    win overlaps, background 0); VOC-style segmentation images use their first channel.
    """
    if "panoptic_image" in example:
        rgb = tf.cast(example["panoptic_image"], tf.int32)
        flat = tf.reshape(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], [-1])
        _, idx = tf.unique(flat)
        return tf.cast(tf.reshape(idx, tf.shape(rgb)[:2]), tf.uint8)[..., None]
    objects = example.get("objects", {})
    for key in ("segmentation", "mask"):
        if isinstance(objects, dict) and key in objects:
            inst = tf.cast(objects[key], tf.int32)
            if inst.shape.rank == 4:
                inst = inst[..., 0]
            count = tf.shape(inst)[0]
            ids = tf.cast(inst > 0, tf.int32) * tf.reshape(tf.range(1, count + 1), [-1, 1, 1])
            # A zero plane keeps the reduction defined for images without instances.
            ids = tf.concat([tf.zeros_like(ids[:1]), ids], 0)
            return tf.cast(tf.reduce_max(ids, axis=0), tf.uint8)[..., None]
    for key in _TFDS_MASK_KEYS:
        if key in example:
            mask = tf.convert_to_tensor(example[key])
            if mask.shape.rank == 2:
                mask = mask[..., None]
            return tf.cast(mask[..., :1], tf.uint8)
    return None


class TfdsSource(base.ListedSource):
    """TFDS ``name`` (e.g. ``coco/2017_panoptic``), ``split`` in ``data_dir``; with
    ``gt_masks``, masks from `tfds_mask`. Hosts read ``tfds.even_splits`` of the split."""

    has_gt_masks = True

    def __init__(self, name: str | None, *, data_dir: str | os.PathLike | None = None,
                 split: str = "train", gt_masks: bool = False):
        if not name:
            raise ValueError("tfds source needs tfds_name (e.g. 'coco/2017_panoptic')")
        self.name, self.data_dir, self.split, self.gt_masks = name, data_dir, split, gt_masks

    @classmethod
    def from_config(cls, data: Any, masks: Any = None) -> TfdsSource:
        return cls(data.tfds_name or None, data_dir=data.path or None, split=data.split,
                   gt_masks=masks is not None and masks.source == "gt")

    def num_examples(self) -> int:
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.name, data_dir=self.data_dir)
        return builder.info.splits[self.split].num_examples

    def listing(self, shard: base.Shard, *, shuffle_files: bool,
                seed: int) -> tuple[tf.data.Dataset, Callable[..., base.Example]]:
        """The split's (already decoded) TFDS examples and the function making examples of
        them; the evaluation builders use it too."""
        import tensorflow_datasets as tfds

        name, split, gt_masks = self.name, self.split, self.gt_masks
        splits = tfds.even_splits(split, n=shard.count)
        try:
            ds = tfds.load(name, split=splits[shard.index], data_dir=self.data_dir,
                           download=False, shuffle_files=shuffle_files,
                           read_config=tfds.ReadConfig(shuffle_seed=seed))
        except (AssertionError, FileNotFoundError,
                tfds.core.registered.DatasetNotFoundError) as e:
            raise FileNotFoundError(
                f"tfds source: {name!r} split {split!r} is not prepared in "
                f"data_dir={self.data_dir!r} (this pipeline never downloads; run tfds build "
                f"there first): {e}") from None

        def load(ex):
            mask = tfds_mask(ex) if gt_masks else None
            if gt_masks and mask is None:
                raise ValueError(f"tfds source: {name} has no segmentation feature for mask 'gt'")
            label = ex.get("label", tf.constant(-1))
            label = label if label.shape.rank == 0 else tf.constant(-1)
            names = [ex[k] for k in ("image/filename", "file_name", "filename") if k in ex]
            filename = tf.strings.join([name, names[0]], ":") if names else name
            # Cityscapes' TFDS builder names its camera image ``image_left``.
            image = ex["image"] if "image" in ex else ex["image_left"]
            return base.example(image, mask, label, filename)

        return ds, load
