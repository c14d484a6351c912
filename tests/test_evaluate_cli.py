"""Backbone loading (orbax workdir, Haiku .npy, random) and tiny end-to-end evaluator CLI runs
on a few real CIFAR-10 / CamVid images with a random-init tiny ResNet-18 at 32 px."""

import argparse
import json

import eval_helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tolerances import assert_f32_close, f32_tolerance

from detcon_jax import checkpoint, interop, model, step
from detcon_jax.evaluate import common, features, knn, linear, segmentation

PER_CLASS = 3


@pytest.fixture(scope="module")
def cifar_subset(data_dir, tmp_path_factory):
    """The first PER_CLASS images of every class of both splits, linked into a new folder."""
    return eval_helpers.link_cifar_subset(data_dir / "cifar10",
                                          tmp_path_factory.mktemp("cifar10"), PER_CLASS)


@pytest.fixture(scope="module")
def camvid_subset(data_dir, tmp_path_factory):
    return eval_helpers.link_camvid_subset(data_dir / "camvid", tmp_path_factory.mktemp("camvid"))


def _tiny_network():
    return model.DetConNetwork(depth=18, mlp_hidden_size=16, projection_size=8,
                               encoder_blocks_per_group=(1, 1, 1, 1),
                               encoder_channels_per_group=(8, 8, 8, 8), encoder_bottleneck=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with an orbax TrainState checkpoint of a tiny DetCon network at step 3.

    One training-mode forward makes the BatchNorm moving averages non-trivial.
    """
    network = _tiny_network()
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    masks = jnp.ones((4, 2, 1))
    variables = network.init(jax.random.key(0), images, masks, train=True)
    _, updates = network.apply(variables, images, masks, train=True, mutable=["batch_stats"])
    state = step.TrainState(
        step=jnp.asarray(3, jnp.int32), online_params=variables["params"],
        online_batch_stats=updates["batch_stats"], target_params=None, target_batch_stats=None,
        opt_state=({"momentum": jnp.ones(3)},), rng=jax.random.PRNGKey(2))
    path = tmp_path_factory.mktemp("workdir")
    saver = checkpoint.Checkpointer(str(path / "checkpoints"), keep=2,
                                    signature={"method": "detcon_b"})
    saver.save(3, state, data_position=3)
    saver.close()
    return path, network, {"params": variables["params"],
                           "batch_stats": updates["batch_stats"]}


@pytest.mark.slow
def test_load_backbone_from_workdir_matches_network_embedding(workdir):
    path, network, variables = workdir
    backbone, info = features.load_backbone(str(path))
    assert info["kind"] == "orbax" and info["step"] == 3 and info["feature_dim"] == 8
    images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    # The DetCon network normalises inside; the bare encoder gets it from the backbone.
    expected = network.apply(variables, images, None, train=False)["embedding"]
    got = np.asarray(backbone(images)).mean(axis=(1, 2))
    # The same tiny encoder (8 channels, one block per group, eval mode) in two programs:
    # its longest sum is the 7 x 7 x 3 = 147-term stem convolution, and a feature passes 13
    # convolutions (stem, 4 blocks of 2, 4 shortcuts).
    assert_f32_close(got, expected, f32_tolerance(147, depth=13))
    # Same result through the step directory.
    again, _ = features.load_backbone(str(path / "checkpoints" / "3"))
    np.testing.assert_array_equal(np.asarray(again(images)), np.asarray(backbone(images)))


def test_load_backbone_from_haiku_npy(tmp_path):
    module = model.ResNet(depth=18)
    # Random values of the right shapes (compiling a ResNet-18 init would take ~20 s here).
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(s.dtype) if s.dtype == jnp.float32
        else np.full(s.shape, 5, s.dtype), shapes)
    hk_params, hk_state = interop.flax_to_haiku(variables, root="res_net18")
    np.save(tmp_path / "resnet18.npy", {**hk_params, **hk_state}, allow_pickle=True)
    backbone, info = features.load_backbone(str(tmp_path / "resnet18.npy"))
    assert info["kind"] == "haiku" and info["depth"] == 18 and info["feature_dim"] == 512
    assert backbone.module.structure() == module.structure()
    # The loaded variables are the saved ones, leaf for leaf (the forward itself is the
    # same jitted function as for the other sources).
    want = jax.tree_util.tree_leaves_with_path(dict(variables))
    have = dict(jax.tree_util.tree_leaves_with_path(backbone.variables))
    assert len(have) == len(want)
    for path, leaf in want:
        np.testing.assert_array_equal(np.asarray(have[path]), np.asarray(leaf),
                                      err_msg=jax.tree_util.keystr(path))


def test_random_backbone_has_identity_batchnorm_statistics():
    backbone, info = features.load_backbone("random:tiny", seed=1)
    stats = jax.tree_util.tree_leaves_with_path(backbone.variables["batch_stats"])
    for path, leaf in stats:
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            assert np.all(np.asarray(leaf) == 1.0), name
        elif name.endswith("['mean']"):
            assert np.all(np.asarray(leaf) == 0.0), name
    out = backbone(np.full((1, 32, 32, 3), 0.5, np.float32))
    assert out.shape == (1, 1, 1, 8) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="random:DEPTH"):
        features.load_backbone("random:resnet")


@pytest.mark.slow
def test_linear_cli_end_to_end(cifar_subset, workdir, tmp_path, capsys):
    out = tmp_path / "linear.json"
    code = linear.main([f"--checkpoint={workdir[0]}", f"--data={cifar_subset}",
                        "--image_size=32", "--batch_size=16", "--epochs=2",
                        "--augment_passes=2", "--learning_rates=0.1,1",
                        "--probe_batch_size=8", f"--output={out}"])
    assert code == 0
    assert "linear probe top-1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_train"] == 10 * PER_CLASS and result["num_test"] == 10 * PER_CLASS
    assert set(result["sweep"]) == {"0.1", "1.0"}
    assert result["backbone"]["kind"] == "orbax"
    # The same protocol on features computed here from the same checkpoint and images (the
    # documented inputs: two augmented passes to train on, centre crops to hold out and to
    # test) gives the reported figures. Top-1 counts whole images: compared exactly.
    backbone, _ = features.load_backbone(str(workdir[0]))
    data = _classification_data(cifar_subset)
    center_x, train_y = data.features(backbone, split="train")
    test_x, test_y = data.features(backbone, split="test")
    passes = data.augmented_features(backbone, split="train", passes=2, seed=0)
    want = linear.linear_probe_protocol(
        passes, train_y, test_x, test_y, heldout_x=center_x, learning_rates=(0.1, 1.0),
        seed=0, num_classes=10, num_epochs=2, batch_size=8)
    assert result["top1"] == want["top1"]
    assert result["learning_rate"] == want["learning_rate"]
    assert result["sweep"] == want["sweep"]


@pytest.mark.slow
def test_knn_cli_end_to_end(cifar_subset, tmp_path, capsys):
    out = tmp_path / "knn.json"
    code = knn.main(["--checkpoint=random:tiny", f"--data={cifar_subset}", "--image_size=32",
                     "--batch_size=16", f"--output={out}"])
    assert code == 0
    assert "k-NN top-1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["k"] == 20 and result["num_test"] == 10 * PER_CLASS
    # An independent float64 k-NN on the same backbone's centre-crop features.
    backbone, _ = features.load_backbone("random:tiny", seed=0)
    data = _classification_data(cifar_subset)
    train_x, train_y = data.features(backbone, split="train")
    test_x, test_y = data.features(backbone, split="test")
    assert result["top1"] == pytest.approx(eval_helpers.knn_top1(
        train_x, train_y, test_x, test_y, k=20, temperature=0.07, num_classes=10), abs=1e-9)
    # Top-1 of 30 images can coincide under a wrong vote (e.g. unweighted): the label of
    # every test image is the float64 vote's too.
    np.testing.assert_array_equal(
        knn.knn_predict(train_x, train_y, test_x, k=20, temperature=0.07, num_classes=10),
        eval_helpers.knn_predictions(train_x, train_y, test_x, k=20, temperature=0.07,
                                     num_classes=10))


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_segmentation_cli_end_to_end(camvid_subset, tmp_path, mode):
    out = tmp_path / f"{mode}.json"
    code = segmentation.main([f"--mode={mode}", "--checkpoint=random:tiny",
                              f"--data={camvid_subset}", "--image_size=32", "--batch_size=2",
                              "--epochs=2", "--steps=2", "--head_channels=8", "--augment_passes=1",
                              f"--predictions_png={tmp_path / 'pred.png'}",
                              "--predictions_count=3", f"--output={out}"])
    assert code == 0
    result = json.loads(out.read_text())
    # Three val images, each a row of image | ground truth | prediction at the labels'
    # native resolution (the scored one).
    height, width = segmentation_labels(camvid_subset / "val" / "labels").shape[1:]
    assert np.asarray(Image.open(tmp_path / "pred.png")).shape == (3 * height, 3 * width, 3)
    assert result["test_split"] == "val"  # no test/ folder in the subset
    assert set(result["per_class_iou"]) == set(segmentation.CAMVID_CLASSES)
    confusion = np.asarray(result["confusion_matrix"])
    assert confusion.shape == (11, 11)
    # Every non-Unlabelled pixel of the 4 val images (at native resolution) is counted.
    labels = segmentation_labels(camvid_subset / "val" / "labels")
    assert confusion.sum() == np.sum(labels != 11)
    # Rows are the ground truth: per class, the val labels' pixel counts.
    np.testing.assert_array_equal(confusion.sum(axis=1),
                                  np.bincount(labels[labels != 11], minlength=11))
    # mIoU, per-class IoU and pixel accuracy recomputed from the reported confusion matrix.
    per_class, miou, accuracy = eval_helpers.iou_percent(confusion)
    assert result["miou"] == pytest.approx(miou, abs=1e-9)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    for name, want in zip(segmentation.CAMVID_CLASSES, per_class, strict=True):
        assert result["per_class_iou"][name] == pytest.approx(want, abs=1e-9), name


def segmentation_labels(folder):
    import tensorflow as tf

    out = []
    for path in sorted(folder.iterdir()):
        label = tf.io.decode_png(tf.io.read_file(str(path)), channels=1)
        out.append(label.numpy()[..., 0])
    return np.stack(out)


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint=random:tiny", "--data=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--checkpoint=/nonexistent/workdir", "--data=DATA"], "/nonexistent/workdir"),
    (["--checkpoint=/nonexistent/model.npy", "--data=DATA"], "/nonexistent/model.npy"),
])
def test_bad_paths_give_one_line_errors(cifar_subset, capsys, argv, message):
    argv = [a.replace("DATA", str(cifar_subset)) for a in argv]
    assert knn.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_segmentation_bad_data_dir(capsys):
    assert segmentation.main(["--checkpoint=random:tiny", "--data=/nonexistent/camvid"]) == 2
    assert "/nonexistent/camvid" in capsys.readouterr().err


def _classification_data(cifar_subset):
    """The CLIs' data at the tests' flags (--image_size=32 --batch_size=16, default crop)."""
    args = argparse.Namespace(data=str(cifar_subset), image_size=32, batch_size=16,
                              crop_padding=32, tfds_data_dir=None, train_split="train",
                              test_split="test")
    return common.ClassificationData.from_args(args)


@pytest.mark.slow
def test_augmented_passes_are_aligned_and_differ(cifar_subset):
    data = _classification_data(cifar_subset)
    assert data.num_classes == 10 and data.source == "folder"
    backbone, _ = features.load_backbone("random:tiny")
    center, labels = data.features(backbone, split="train")
    views = data.augmented_features(backbone, split="train", passes=2, seed=0)
    again = data.augmented_features(backbone, split="train", passes=2, seed=0)
    assert views.shape == (2,) + center.shape
    np.testing.assert_array_equal(views, again)  # reproducible given the seed
    assert not np.allclose(views[0], views[1]) and not np.allclose(views[0], center)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), PER_CLASS))
