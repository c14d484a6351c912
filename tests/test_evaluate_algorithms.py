"""Evaluator algorithms on plain arrays: k-NN, linear probe, IoU metrics, segmentation probe."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import f32_tolerance

from detcon_jax.evaluate import knn, linear, segmentation

NUM_CLASSES = 10


def _separable(rng, n_per_class, dim=32, noise=0.1):
    """Each class is a tight cluster around its own random direction."""
    centres = rng.normal(size=(NUM_CLASSES, dim))
    y = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    x = centres[y] + noise * rng.normal(size=(len(y), dim))
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


# ---------------------------------------------------------------------------------------------
# k-NN.


def test_knn_separable_features_give_100_percent():
    rng = np.random.default_rng(0)
    train_x, train_y = _separable(rng, 30)
    test_x, test_y = _separable(np.random.default_rng(0), 30)  # same centres, new noise
    test_x = test_x + 0.05 * rng.normal(size=test_x.shape).astype(np.float32)
    assert knn.knn_top1(train_x, train_y, test_x, test_y) == 100.0


def test_knn_random_labels_give_chance():
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(2000, 16))
    test_x = rng.normal(size=(1000, 16))
    top1 = knn.knn_top1(train_x, rng.integers(0, 10, 2000), test_x, rng.integers(0, 10, 1000),
                        num_classes=10)
    # Binomial std at p=0.1, n=1000 is 0.95 points: 5 standard deviations either side.
    assert 5.0 < top1 < 15.0


def test_knn_weighting_by_hand():
    # Test point e0. Two class-0 neighbours at similarity 0.6, one class-1 neighbour at 1.0.
    s = 0.6
    other = np.sqrt(1 - s * s)
    train = np.array([[s, other, 0], [s, 0, other], [1, 0, 0]], np.float32)
    labels = np.array([0, 0, 1])
    test = np.array([[1, 0, 0]], np.float32)
    # T = 0.07: exp(1/T) = 1.6e6 beats 2 exp(0.6/T) = 1.1e4 -> class 1.
    assert knn.knn_predict(train, labels, test, k=3, temperature=0.07)[0] == 1
    # T = 10: weights ~ uniform (1.105 vs 2 * 1.062) -> the majority, class 0.
    assert knn.knn_predict(train, labels, test, k=3, temperature=10.0)[0] == 0
    # k = 1: only the closest counts.
    assert knn.knn_predict(train, labels, test, k=1, temperature=10.0)[0] == 1


def test_knn_chunked_matches_brute_force():
    rng = np.random.default_rng(2)
    train_x, train_y = rng.normal(size=(103, 8)), rng.integers(0, 5, 103)
    test_x = rng.normal(size=(37, 8))
    k, t = 7, 0.1
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    expected = []
    for row in sim:
        top = np.argsort(-row)[:k]
        votes = np.zeros(5)
        np.add.at(votes, train_y[top], np.exp(row[top] / t))
        expected.append(np.argmax(votes))
    got = knn.knn_predict(train_x, train_y, test_x, k=k, temperature=t, num_classes=5,
                          test_chunk=16, train_chunk=10)  # neither divides its size
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# Linear probe.


def test_linear_probe_separable_features_give_100_percent():
    rng = np.random.default_rng(3)
    x, y = _separable(rng, 40, noise=0.2)
    train_x, train_y, test_x, test_y = x[:300], y[:300], x[300:], y[300:]
    result = linear.train_linear_probe(train_x, train_y, test_x, test_y, num_classes=10,
                                       learning_rate=0.1, num_epochs=30, batch_size=64)
    assert result["val_top1"] == 100.0
    # The standardisation is folded into the returned classifier (acts on raw features).
    assert linear.top1_accuracy(result["params"], train_x, train_y) == 100.0


def test_linear_probe_random_labels_give_chance():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    y = rng.integers(0, 10, 3000)
    result = linear.train_linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], num_classes=10,
                                       learning_rate=0.1, num_epochs=10, batch_size=256)
    assert 5.0 < result["val_top1"] < 15.0
    # ... while it does fit its training data better than chance (it learns something).
    assert linear.top1_accuracy(result["params"], x[:2000], y[:2000]) > 15.0


def test_linear_probe_learns_and_loss_decreases_with_epochs():
    rng = np.random.default_rng(5)
    x, y = _separable(rng, 20, noise=1.0)
    short = linear.train_linear_probe(x, y, num_classes=10, learning_rate=0.01, num_epochs=1,
                                      batch_size=32)
    longer = linear.train_linear_probe(x, y, num_classes=10, learning_rate=0.01,
                                       num_epochs=20, batch_size=32)
    assert longer["train_loss"] < short["train_loss"] < np.log(10) + 0.1


def _correlated(rng, n):
    """Two classes whose mean difference lies along a noisy direction: a nearest-mean
    classifier (what one tiny step from zero gives) is poor, a trained one is perfect."""
    label = rng.integers(0, 2, n)
    noise = 3 * rng.normal(size=n)
    return np.stack([2 * label - 1 + noise, noise], 1).astype(np.float32), label


def test_linear_protocol_sweep_and_augmented_passes():
    rng = np.random.default_rng(6)
    x, y = _correlated(rng, 400)
    views = np.stack([x + 0.01 * rng.normal(size=x.shape).astype(np.float32)
                      for _ in range(3)])
    test_x, test_y = _correlated(rng, 200)
    result = linear.linear_probe_protocol(views, y, test_x, test_y, heldout_x=x,
                                          learning_rates=(1e-7, 0.1), num_epochs=20,
                                          batch_size=32, num_classes=2)
    assert set(result["sweep"]) == {"1e-07", "0.1"}
    assert result["sweep"]["1e-07"] < 80.0 < result["sweep"]["0.1"]
    assert result["learning_rate"] == 0.1
    assert result["top1"] > 95.0


def test_linear_probe_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="do not match"):
        linear.train_linear_probe(np.zeros((5, 3)), np.zeros(4, int))


# ---------------------------------------------------------------------------------------------
# IoU metrics.


def test_iou_hand_case_with_ignore_label():
    label = np.array([[0, 0, 1, 1],
                      [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 0]])  # predictions under 255 must not count
    cm = segmentation.confusion_matrix(pred, label, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0],
                                       [0, 2, 0],
                                       [1, 0, 1]])
    iou, miou = segmentation.iou_from_confusion(cm)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: 2/(2+1) ; class 2: 1/2.
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_absent_class_is_excluded_from_the_mean():
    label = np.array([0, 0, 1, 11])
    pred = np.array([0, 0, 1, 2])  # class 2 predicted only on an ignored pixel
    cm = segmentation.confusion_matrix(pred, label, num_classes=3, ignore_label=11)
    iou, miou = segmentation.iou_from_confusion(cm)
    assert iou[0] == 1.0 and iou[1] == 1.0 and np.isnan(iou[2])
    assert miou == 1.0
    metrics = segmentation.segmentation_metrics(cm, ["a", "b", "c"])
    assert metrics["per_class_iou"] == {"a": 100.0, "b": 100.0, "c": None}
    assert metrics["num_pixels"] == 3


def test_constant_predictor_miou_by_hand():
    rng = np.random.default_rng(7)
    label = rng.choice([0, 1, 3, 255], size=(4, 16, 16), p=[0.5, 0.2, 0.2, 0.1])
    pred = np.full(label.shape, 1)
    n = {c: int(np.sum(label == c)) for c in (0, 1, 3)}
    valid = sum(n.values())
    # Predicting 1 everywhere (on valid pixels): IoU_1 = n1 / valid; classes 0 and 3 occur in
    # the ground truth but are never predicted -> IoU 0; class 2 occurs nowhere -> excluded.
    expected = (n[1] / valid + 0 + 0) / 3
    cm = segmentation.confusion_matrix(pred, label, num_classes=4)
    metrics = segmentation.segmentation_metrics(cm)
    assert metrics["miou"] == pytest.approx(100 * expected)
    assert metrics["per_class_iou"]["2"] is None
    assert metrics["pixel_accuracy"] == pytest.approx(100 * n[1] / valid)


def test_pixel_cross_entropy_skips_ignored_pixels():
    rng = np.random.default_rng(8)
    logits = jnp.asarray(rng.normal(size=(1, 2, 2, 3)), jnp.float32)
    labels = jnp.asarray([[[0, 255], [2, 1]]])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[0].reshape(4, 3),
                                                         jnp.asarray([0, 0, 2, 1]))
    expected = (ce[0] + ce[2] + ce[3]) / 3
    got = segmentation.pixel_cross_entropy(logits, labels, ignore_label=255)
    # A mean of 3 cross-entropies over 3 classes each: a few roundings (f32_tolerance(3, 2)).
    np.testing.assert_allclose(got, expected, rtol=f32_tolerance(3, depth=2))
    all_ignored = segmentation.pixel_cross_entropy(logits, jnp.full((1, 2, 2), 255))
    assert float(all_ignored) == 0.0


def test_segmentation_probe_learns_separable_maps():
    rng = np.random.default_rng(9)
    num, classes = 24, 4
    image_class = rng.integers(0, classes, num)
    centres = rng.normal(size=(classes, 16))
    maps = centres[image_class][:, None, None, :] + 0.1 * rng.normal(size=(num, 3, 3, 16))
    labels = np.broadcast_to(image_class[:, None, None], (num, 12, 12)).copy()
    labels[:, :2] = 255  # ignored band
    probe = segmentation.train_segmentation_probe(maps, labels, num_classes=classes,
                                                  learning_rate=0.1, num_epochs=20,
                                                  batch_size=8)
    pred = segmentation.predict_probe(probe["params"], maps, (12, 12), batch_size=5)
    assert pred.shape == (num, 12, 12)
    cm = segmentation.confusion_matrix(pred, labels, num_classes=classes)
    assert segmentation.segmentation_metrics(cm)["miou"] == 100.0
