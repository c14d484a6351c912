"""Independent numpy restatements of the evaluation figures, to recompute what a CLI reports.

They follow the documented protocols (weighted k-NN of InstDisc / DINO; IoU from a
confusion matrix) and share no code with ``detcon_jax.evaluate``.
"""

from __future__ import annotations

import numpy as np


def knn_predictions(train_x, train_y, test_x, *, k: int, temperature: float,
                    num_classes: int) -> np.ndarray:
    """Labels of the weighted k-NN vote on cosine similarity, in float64.

    Each test row takes its ``k`` most similar training rows; each votes for its label with
    ``exp(similarity / temperature)``; the largest total wins (ties: the lowest class).
    """
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sim = unit(test_x) @ unit(train_x).T
    k = min(k, sim.shape[1])
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(sim), num_classes))
    for row, (idx, sims) in enumerate(zip(neighbours, np.take_along_axis(sim, neighbours, 1),
                                          strict=True)):
        np.add.at(scores[row], np.asarray(train_y)[idx], np.exp(sims / temperature))
    return scores.argmax(axis=1)


def knn_top1(train_x, train_y, test_x, test_y, *, k: int, temperature: float,
             num_classes: int) -> float:
    """Top-1 (percent) of `knn_predictions` on ``(test_x, test_y)``."""
    predictions = knn_predictions(train_x, train_y, test_x, k=k, temperature=temperature,
                                  num_classes=num_classes)
    return float(100.0 * np.mean(predictions == np.asarray(test_y)))


def iou_percent(confusion) -> tuple[list[float | None], float, float]:
    """Per-class IoU (percent; None where a class is neither predicted nor labelled), their
    mean over the defined classes, and pixel accuracy, from ``confusion[label, prediction]``."""
    confusion = np.asarray(confusion, np.float64)
    per_class = []
    for c in range(len(confusion)):
        tp = confusion[c, c]
        union = confusion[c, :].sum() + confusion[:, c].sum() - tp
        per_class.append(None if union == 0 else 100.0 * tp / union)
    defined = [v for v in per_class if v is not None]
    return per_class, float(np.mean(defined)), 100.0 * np.trace(confusion) / confusion.sum()


def link_cifar_subset(cifar_dir, root, per_class: int):
    """``root/{train,test}/CLASS``: symlinks to the first ``per_class`` images of every class."""
    for split in ("train", "test"):
        for class_dir in sorted((cifar_dir / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return root


def link_camvid_subset(camvid_dir, root, counts=(("train", 6), ("val", 4))):
    """``root/SPLIT/{images,labels}``: symlinks to the first images (and labels) per split."""
    for split, count in counts:
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        for image in sorted((camvid_dir / split / "images").iterdir())[:count]:
            (root / split / "images" / image.name).symlink_to(image)
            label = camvid_dir / split / "labels" / f"{image.stem}.png"
            (root / split / "labels" / label.name).symlink_to(label)
    return root


def write_haiku_resnet18(path):
    """A released-layout Haiku ResNet-18 ``.npy`` at ``path`` with random weights and
    statistics (integer leaves 7); returns ``path``."""
    import jax
    import jax.numpy as jnp

    from detcon_jax import interop, model

    net = model.ResNet(depth=18)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: (np.full(s.shape, 7, np.int32) if s.dtype == jnp.int32
                   else rng.uniform(0.5, 1.5, s.shape).astype(np.float32)), shapes)
    hk_params, hk_state = interop.flax_to_haiku(variables, root="res_net18")
    np.save(path, {**hk_params, **hk_state}, allow_pickle=True)
    return path
