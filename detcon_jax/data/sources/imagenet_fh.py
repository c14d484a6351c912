"""ImageNet-FH: TFRecords in the official DetCon layout, as ``detcon_jax.fh_masks`` writes them.

Each ``tf.train.Example`` holds ``image/encoded``, ``image/class/label`` (1-based; 0 = none),
``image/filename`` and ``image/felzenszwalb_segmentations`` (the raw uint8 bytes of the
``[K, H, W]`` stack of K Felzenszwalb settings); shards are named ``{split}-*-of-*``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import tensorflow as tf

from detcon_jax import record_index
from detcon_jax.data import decode, framing
from detcon_jax.data.sources import base
from detcon_jax.fh_masks import FH_FEATURE

AUTOTUNE = tf.data.AUTOTUNE

# The official ImageNet splits under their usual shard counts: counted without reading them.
KNOWN_SIZES = {("train", 2048): 1281167, ("train", 1024): 1281167,
               ("validation", 256): 50000, ("validation", 128): 50000}


def _parse_fields(record: tf.Tensor, name: tf.Tensor | str) -> dict[str, tf.Tensor]:
    features = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/class/label": tf.io.FixedLenFeature((), tf.int64, default_value=0),
        "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
        FH_FEATURE: tf.io.VarLenFeature(tf.string),
    }
    parsed = tf.io.parse_single_example(record, features)
    fh = tf.sparse.to_dense(parsed[FH_FEATURE], default_value="")
    return {
        "image": parsed["image/encoded"],
        "fh": tf.io.decode_raw(tf.strings.reduce_join(fh), tf.uint8),
        # The official layout stores 1-based labels (0 = none).
        "label": tf.cast(parsed["image/class/label"] - 1, tf.int32),
        "name": tf.strings.join([name, parsed["image/filename"]], separator=" "),
    }


def _fh_stack_to_mask(ex: dict[str, tf.Tensor], fh_index: int) -> base.Example:
    image, fh, name = ex["image"], ex["fh"], ex["name"]

    def reshape():
        shape = decode.image_shape(image)
        plane = shape[0] * shape[1]
        size = tf.shape(fh)[0]
        fits = tf.debugging.Assert(
            size % plane == 0,
            ["Felzenszwalb mask size differs from its image in record", name, "mask bytes",
             size, "image", shape])
        with tf.control_dependencies([fits]):
            # A separate check, so that the message says which of the two is wrong.
            has_setting = tf.debugging.Assert(
                size // plane > fh_index,
                [f"no Felzenszwalb setting {fh_index} (masks.fh_index) in record", name,
                 "settings stored", size // plane])
        with tf.control_dependencies([has_setting]):
            stack = tf.reshape(fh, tf.concat([[size // plane], shape], 0))
        return stack[fh_index][..., None]

    mask = tf.cond(tf.size(fh) > 0, reshape, lambda: tf.zeros([0, 0, 1], tf.uint8))
    mask.set_shape([None, None, 1])
    return base.example(image, mask, ex["label"], name)


class ImagenetFhSource(base.Source):
    """Shards ``data_dir/{split}-*-of-*``; masks are stored setting ``fh_index`` of each
    record's stack (an empty ``[0, 0, 1]`` mask when a record has none)."""

    stored_fh = True

    def __init__(self, data_dir: str | os.PathLike, split: str = "train", *, fh_index: int = 0):
        self.data_dir, self.split, self.fh_index = data_dir, split, fh_index
        self.pattern = os.path.join(str(data_dir), f"{split}-*-of-*")

    @classmethod
    def from_config(cls, data: Any, masks: Any = None) -> ImagenetFhSource:
        if not data.path:
            raise ValueError("imagenet_fh source needs data_dir (config key 'data.path')")
        return cls(data.path, data.split, fh_index=masks.fh_index if masks is not None else 0)

    def num_examples(self) -> int:
        """Counted from the shards' index or framing (`record_index`), unless their names are an
        official split's."""
        files = sorted(tf.io.gfile.glob(self.pattern))
        if not files:
            raise FileNotFoundError(
                f"imagenet_fh: no shards {self.split}-*-of-* in {self.data_dir}")
        total = int(files[0].rsplit("-of-", 1)[1])
        if len(files) == total and (self.split, total) in KNOWN_SIZES:
            return KNOWN_SIZES[(self.split, total)]
        return sum(record_index.shard_counts(
            files, record_index.read_index(str(self.data_dir), self.split)))

    def reader(self, shard: base.Shard, *, shuffle_files: bool, seed: int,
               stats: framing.PipelineStats, mask_fn: base.MaskFn) -> base.Reader:
        pattern = self.pattern
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise FileNotFoundError(f"imagenet_fh: no TFRecord shards match {pattern}")
        files = shard.select(files, f"imagenet_fh shards {pattern}")
        data_dir_name = f"{self.data_dir}/{self.split}:"
        fh_index = self.fh_index

        def parse(record):
            # Parsing, the mask reshape and ``mask_fn`` in one function: every dataset stage
            # costs a function call and a hand-over per element, as much as the parsing
            # itself. For the same reason records are named by their ``image/filename`` alone
            # (not by shard and index).
            ex = _parse_fields(record, data_dir_name)
            # The mask reshape reads the image header: only for images that pass validation.
            # The others get an empty mask (valid ones never do: ``mask_fn`` requires the
            # stored masks or makes grid / all-zero ones) and are dropped, and counted, by the
            # filter below.
            empty = base.example(ex["image"], None, ex["label"], ex["name"])
            return tf.cond(framing.is_valid_encoded_image(ex["image"]),
                           lambda: mask_fn(_fh_stack_to_mask(ex, fh_index)), lambda: empty)

        cycle = min(len(files), 16)
        names = tf.constant(files)

        def file_order(epoch):
            order = tf.range(len(files), dtype=tf.int64)
            if shuffle_files:
                order = tf.random.experimental.stateless_shuffle(
                    order, seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))
            return tf.data.Dataset.from_tensor_slices(order)

        def interleave(epoch, open_file, parallel=AUTOTUNE):
            # A parallel interleave in a fixed order yields what a sequential one does.
            return file_order(epoch).interleave(open_file, cycle_length=cycle, block_length=1,
                                                num_parallel_calls=parallel)

        @functools.cache
        def file_counts():
            return record_index.shard_counts(
                files, record_index.read_index(str(self.data_dir), self.split))

        def records(epoch, skipped=None):
            if skipped is None:
                return interleave(epoch, lambda i: tf.data.TFRecordDataset(names[i]))
            skip = tf.convert_to_tensor(skipped, tf.bool)
            counts = tf.constant(file_counts(), tf.int64)

            def open_unless_skipped(i):
                # A skipped file: no file name to open, and one empty placeholder per record.
                opened = tf.data.TFRecordDataset(tf.boolean_mask(names[i][None], ~skip[i][None]))
                held = tf.where(skip[i], counts[i], tf.constant(0, tf.int64))
                return opened.concatenate(tf.data.Dataset.from_tensors("").repeat(held))

            return interleave(epoch, open_unless_skipped)

        def layout(epoch):
            counts = tf.constant(file_counts(), tf.int64)
            # Sequential: the layout is read inside the pipeline, no threads needed for it.
            return interleave(epoch, lambda i: tf.data.Dataset.from_tensors(i).repeat(counts[i]),
                              parallel=None)

        def examples(ds):
            ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
            return framing.filter_valid(ds, stats, lambda ex: tf.size(ex["mask"]) > 0)

        return base.Reader(records=records, examples=examples, file_counts=file_counts,
                           layout=layout)

