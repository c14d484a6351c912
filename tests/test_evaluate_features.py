"""Evaluator plumbing: subsets, the on-disk feature cache, random:WORKDIR, --help, reports.

Cheap: a random-init tiny ResNet-18 at 32 px on a few linked CIFAR-10 / CamVid images.
"""

from __future__ import annotations

import argparse
import json

import eval_helpers
import jax
import numpy as np
import pytest
from PIL import Image

from detcon_jax.data import evaluation
from detcon_jax.evaluate import cache, common, features, knn, linear, reporting, segmentation

PER_CLASS = 2


@pytest.fixture(scope="module")
def cifar_subset(data_dir, tmp_path_factory):
    return eval_helpers.link_cifar_subset(data_dir / "cifar10",
                                          tmp_path_factory.mktemp("cifar10"), PER_CLASS)


def _data(cifar_subset, cache_root=None, **subset):
    args = argparse.Namespace(data=str(cifar_subset), image_size=32, batch_size=8,
                              crop_padding=32, tfds_data_dir=None, train_split="train",
                              test_split="test", **subset)
    return common.ClassificationData.from_args(
        args, cache.FeatureCache(str(cache_root)) if cache_root else None)


class CountingForward:
    """A forward that counts its calls (the injection point: any callable with a
    ``fingerprint``)."""

    def __init__(self, inner):
        self.inner, self.fingerprint, self.calls = inner, inner.fingerprint, 0

    def __call__(self, images):
        self.calls += 1
        return self.inner(images)


def test_subset_indices_per_class_then_balanced_max():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    keep = evaluation.subset_indices(labels, len(labels), per_class=2)
    np.testing.assert_array_equal(keep, [0, 1, 3, 4, 5, 6])
    # Round-robin over classes: the first image of each class, then the second of class 0.
    keep = evaluation.subset_indices(labels, len(labels), per_class=2, max_images=4)
    np.testing.assert_array_equal(keep, [0, 1, 3, 5])
    np.testing.assert_array_equal(evaluation.subset_indices(None, 9, max_images=3), [0, 1, 2])


@pytest.mark.slow
def test_cache_hit_avoids_extraction_and_gives_the_same_arrays(cifar_subset, tmp_path):
    backbone, _ = features.load_backbone("random:tiny")
    data = _data(cifar_subset, tmp_path / "cache", train_per_class=1)
    forward = CountingForward(backbone.on_mesh(pool=True))
    first = data.features(forward, split="train")
    assert forward.calls == 2  # 10 images (1 per class), batches of 8
    assert len(first[1]) == 10
    again = data.features(forward, split="train")
    assert forward.calls == 2  # read from disk: no forward
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # The cached rows are those of an extraction without a cache, in data-set order.
    memory = _data(cifar_subset, train_per_class=1).features(backbone, split="train")
    for a, b in zip(first, memory, strict=True):
        np.testing.assert_array_equal(a, b)
    # Another preprocessing is another entry.
    data.features(forward, split="train", crop="resize")
    assert forward.calls == 4
    # Another backbone is another entry, too.
    other, _ = features.load_backbone("random:tiny", seed=1)
    counted = CountingForward(other.on_mesh(pool=True))
    data.features(counted, split="train")
    assert counted.calls == 2


def test_shard_writer_streams_in_shards_and_reads_back_in_order(tmp_path):
    entry = cache.FeatureCache(str(tmp_path)).entry({"a": 1})
    writer = entry.writer(0, shard_bytes=64)
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    for start in range(0, 10, 2):
        order = np.arange(start, start + 2)[::-1]  # out of order within a batch
        writer.add(rows[order], order.astype(np.int32), order)
    writer.close()
    assert len(list((tmp_path / entry.path.split("/")[-1] / "p00000").glob("*.npz"))) > 1
    assert not entry.complete()
    entry.mark_complete(1)
    x, y = entry.read()
    np.testing.assert_array_equal(x, rows)
    np.testing.assert_array_equal(y, np.arange(10))


@pytest.mark.slow
def test_knn_after_linear_reads_the_cached_centre_crops(cifar_subset, tmp_path, capsys):
    flags = ["--checkpoint=random:tiny", f"--data={cifar_subset}", "--image_size=32",
             "--batch_size=8", f"--feature_cache={tmp_path / 'cache'}"]
    assert linear.main(flags + ["--epochs=1", "--augment_passes=0", "--learning_rates=0.1",
                                "--train_max_images=12"]) == 0
    capsys.readouterr()
    assert knn.main(flags + ["--train_max_images=12", f"--output={tmp_path / 'k.json'}"]) == 0
    err = capsys.readouterr().err
    assert err.count("cached in") == 2, err  # train and test centre crops
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["num_train"] == 12 and result["num_test"] == 10 * PER_CLASS


def test_learning_rate_at_the_edge_of_the_grid_warns(capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    x = (np.eye(4)[y] * 5 + 0.1 * rng.normal(size=(40, 4))).astype(np.float32)
    # Separable: every rate scores 100 %, the tie goes to the first (the grid's edge).
    result = linear.linear_probe_protocol(x, y, x, y, learning_rates=(0.1, 0.3, 1.0),
                                          num_epochs=2, batch_size=8)
    assert result["learning_rate"] == 0.1 and result["lr_at_edge"]
    assert "at the edge of the sweep [0.1, 1]" in capsys.readouterr().err
    inside = linear.linear_probe_protocol(x, y, x, y, learning_rates=(0.3, 0.1, 1.0),
                                          num_epochs=2, batch_size=8)
    assert inside["learning_rate"] == 0.3 and not inside["lr_at_edge"]
    assert "edge" not in capsys.readouterr().err


def test_random_workdir_is_the_runs_step0_online_encoder(tmp_path):
    import optax
    from conftest import smoke_config

    from detcon_jax import step

    config = smoke_config()
    config.seed = 7
    (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    backbone, info = features.load_backbone(f"random:{tmp_path}", seed=0)
    assert info["kind"] == "random" and info["step"] == 0
    # What the trainer creates at step 0 from the same config and seed (under jit, as
    # `sharding.create_sharded`: the init's batch statistics are computed, not constants).
    state = jax.jit(lambda: step.create_train_state(config, jax.random.PRNGKey(7),
                                                    optimizer=optax.sgd(0.1)))()
    want = dict(jax.tree_util.tree_leaves_with_path(
        {"params": state.online_params["encoder"],
         "batch_stats": state.online_batch_stats["encoder"]}))
    got = jax.tree_util.tree_leaves_with_path(backbone.variables)
    assert len(got) == len(want)
    for path, leaf in got:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want[path]),
                                      err_msg=jax.tree_util.keystr(path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        features.load_backbone(f"random:{tmp_path / 'empty'}")


@pytest.mark.parametrize("parser, defaults", [
    (linear._parser, ["--image_size IMAGE_SIZE", "(default: 224)", "(default: 10)",
                      "11 x N_train + N_test forwards"]),
    (knn._parser, ["(default: 20)", "N_train + N_test forwards"]),
    (segmentation._parser, ["(default: 50)", "(default: probe)", "forward"]),
])
def test_help_shows_defaults_and_cost(parser, defaults):
    text = " ".join(parser().format_help().split())
    for want in defaults:
        assert " ".join(want.split()) in text, want
    assert "img/s" in text


def test_fh_masks_help_shows_defaults(capsys):
    from detcon_jax import fh_masks

    with pytest.raises(SystemExit):
        fh_masks.main(["--help"])
    assert "(default: 1000)" in capsys.readouterr().out


def test_iou_table_and_predictions_png(tmp_path):
    table = segmentation.format_iou_table({"Sky": 91.234, "Pole": None})
    assert table.splitlines() == ["class  IoU (%)", "Sky      91.23", "Pole         -"]
    images = np.zeros((2, 4, 4, 3), np.float32)
    images[1] = 1.0
    labels = np.array([np.full((4, 4), 0), np.full((4, 4), 255)])
    preds = np.array([np.full((4, 4), 1), np.full((4, 4), 0)])
    segmentation.write_predictions_png(str(tmp_path / "p.png"), images, labels, preds,
                                       num_classes=2)
    png = np.asarray(Image.open(tmp_path / "p.png"))
    assert png.shape == (8, 12, 3)
    palette = reporting._palette(2)
    np.testing.assert_array_equal(png[0, 0], [0, 0, 0])          # image 0 (black)
    np.testing.assert_array_equal(png[0, 4], palette[0])         # its ground truth
    np.testing.assert_array_equal(png[0, 8], palette[1])         # its prediction
    np.testing.assert_array_equal(png[4, 0], [255, 255, 255])    # image 1 (white)
    np.testing.assert_array_equal(png[4, 4:], 0)                 # ignored: black both
