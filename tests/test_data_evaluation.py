"""Tests of the evaluation builders: CIFAR-10 classification, CamVid segmentation."""

import numpy as np
import tensorflow as tf
from data_helpers import SIZE

from detcon_jax.data import PipelineStats, evaluation, sources


def test_eval_dataset_cifar_center_crop_and_train_mode(data_dir):
    root = data_dir / "cifar10"
    ds = evaluation.make_eval_dataset("folder", data_dir=root, split="test", batch_size=96,
                                      image_size=32, stats=PipelineStats())
    labels, valid = [], 0
    for batch in ds:
        assert batch["image"].shape == (96, 32, 32, 3)
        labels.append(batch["label"].numpy()[batch["valid"].numpy()])
        valid += int(batch["valid"].numpy().sum())
    labels = np.concatenate(labels)
    assert valid == 1000 and np.bincount(labels).tolist() == [100] * 10
    train = evaluation.make_eval_dataset("folder", data_dir=root, split="test", batch_size=8,
                                         image_size=32, train=True, seed=0,
                                         stats=PipelineStats())
    batch = next(iter(train))
    assert batch["image"].shape == (8, 32, 32, 3) and "valid" not in batch


def test_segmentation_dataset_camvid_resize_and_ignore_label(data_dir):
    root = data_dir / "camvid"
    ds = evaluation.make_segmentation_dataset(root, split="val", batch_size=4, image_size=SIZE,
                                              void_ids=(11,), ignore_label=255,
                                              stats=PipelineStats())
    batch = next(iter(ds))
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["label"].dtype == tf.int32
    first = sorted((root / "val" / "labels").glob("*.png"))[0]
    raw = tf.io.decode_png(tf.io.read_file(str(first)), channels=1)
    expected = tf.image.resize(raw, [SIZE, SIZE], "nearest").numpy()[..., 0].astype(np.int32)
    expected[expected == 11] = 255
    np.testing.assert_array_equal(batch["label"].numpy()[0], expected)
    train = evaluation.make_segmentation_dataset(root, split="val", batch_size=2,
                                                 image_size=SIZE, train=True, seed=0,
                                                 stats=PipelineStats())
    assert next(iter(train))["label"].shape == (2, SIZE, SIZE)


def test_eval_random_crop_pass_keeps_file_order(data_dir):
    kwargs = dict(data_dir=data_dir / "cifar10", split="test", batch_size=50, image_size=32,
                  crop="random", stats=PipelineStats())
    a = next(iter(evaluation.make_eval_dataset("folder", seed=1, **kwargs)))
    b = next(iter(evaluation.make_eval_dataset("folder", seed=1, **kwargs)))
    c = next(iter(evaluation.make_eval_dataset("folder", seed=2, **kwargs)))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_array_equal(a["label"].numpy(), c["label"].numpy())  # same order
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    files, labels, classes = sources.class_folder_files(data_dir / "cifar10" / "test")
    assert classes[0] == "airplane" and labels[:50] == a["label"].numpy().tolist()
