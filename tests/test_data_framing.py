"""Tests of the framing check of encoded images and the count of skipped images."""

import pathlib

import numpy as np
import tensorflow as tf
from data_helpers import SIZE, configs, take_batches, write_folder

from detcon_jax.data import framing, pretrain


def test_folder_source_skips_and_counts_corrupt_images(tmp_path):
    write_folder(tmp_path)
    stats = framing.PipelineStats()
    ds = pretrain.make_pretrain_dataset(
        *configs("folder", "gt", path=str(tmp_path), image_size=SIZE), batch_size=1,
        repeat=False, shuffle=False, stats=stats)
    batches = take_batches(ds, 10)
    assert len(batches) == 4
    assert stats.skipped == 2 and framing.num_skipped(stats) == 2
    assert sorted(pathlib.Path(n).name for n in stats.skipped_names) == [
        "garbage.png", "truncated.jpg"]


def test_encoded_image_framing_check():
    image = np.full([16, 24, 3], 90, np.uint8)
    jpeg = tf.io.encode_jpeg(image).numpy()
    png = tf.io.encode_png(image).numpy()
    cases = {
        "jpeg": (jpeg, True),
        "jpeg with padding after EOI": (jpeg + b"\x00" * 10, True),
        "truncated jpeg": (jpeg[:-20], False),
        "jpeg cut after EOI's first byte": (jpeg[:-1], False),
        "png": (png, True),
        "truncated png": (png[:-12], False),
        "not an image": (b"hello world, not an image at all", False),
        "empty": (b"", False),
    }
    for name, (data, expected) in cases.items():
        assert bool(framing.is_valid_encoded_image(tf.constant(data))) == expected, name
