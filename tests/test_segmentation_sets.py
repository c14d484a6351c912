"""VOC 2012 and Cityscapes readers on tiny generated folder trees, through the pipeline."""

import numpy as np
import pytest
from PIL import Image

from detcon_jax import data
from detcon_jax.data import segmentation_sets
from tests.test_label_decode import voc_palette

RNG = np.random.default_rng(0)


def _image(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), np.uint8)).save(path)


def _label(path, ids, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids, mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path)


def _ids(h, w, values):
    return RNG.choice(np.asarray(values, np.uint8), size=(h, w))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    labels = {}
    for name, (h, w) in {"a": (40, 48), "b": (36, 44), "c": (30, 40)}.items():
        _image(root / "JPEGImages" / f"{name}.jpg", h, w)
        labels[name] = _ids(h, w, [0, 1, 15, 20, 255])
        _label(root / "SegmentationClassAug" / f"{name}.png", labels[name])  # grayscale
        _label(root / "SegmentationClass" / f"{name}.png", labels[name], voc_palette())
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    # DeepLab's two-column train_aug list and the devkit's one-name-per-line val list.
    (lists / "train_aug.txt").write_text(
        "/JPEGImages/a.jpg /SegmentationClassAug/a.png\n"
        "/JPEGImages/b.jpg /SegmentationClassAug/b.png\n")
    (lists / "val.txt").write_text("c\nb\n")
    return root.parent.parent, labels


def test_voc_splits_list_their_files(voc):
    root, _ = voc
    images, labels = segmentation_sets.voc_files(root, "val")
    assert [p.rsplit("/", 1)[-1] for p in images] == ["c.jpg", "b.jpg"]
    assert all("/SegmentationClass/" in p for p in labels)
    _, labels = segmentation_sets.voc_files(root / "VOCdevkit", "train_aug")
    assert all("/SegmentationClassAug/" in p for p in labels)


def test_voc_val_palette_labels_at_native_resolution(voc):
    root, truth = voc
    ds = data.make_segmentation_dataset(root, layout="voc", split="val", batch_size=2,
                                        stats=data.PipelineStats(), crop="pad",
                                        eval_frame=(48, 48))
    batch = next(ds.as_numpy_iterator())
    assert batch["image"].shape == (2, 48, 48, 3) and batch["label"].shape == (2, 48, 48)
    for label, name in zip(batch["label"], ["c", "b"], strict=True):
        h, w = truth[name].shape
        np.testing.assert_array_equal(label[:h, :w], truth[name])
        assert (label[h:] == 255).all() and (label[:, w:] == 255).all()


def test_voc_train_aug_scale_jitter_crops(voc):
    root, _ = voc
    ds = data.make_segmentation_dataset(root, layout="voc", split="train_aug", batch_size=2,
                                        stats=data.PipelineStats(), train=True, crop="jitter",
                                        image_size=32, seed=3)
    batch = next(ds.as_numpy_iterator())
    assert batch["image"].shape == (2, 32, 32, 3) and batch["label"].shape == (2, 32, 32)
    assert set(np.unique(batch["label"])) <= {0, 1, 15, 20, 255}


def write_cityscapes(root, images_per_split, label_ids):
    """A Cityscapes tree (``leftImg8bit`` + ``gtFine`` labelIds) under ``root``: split ->
    number of images, each image of ``label_ids``' size with those labelIds (image k of a
    split rolled by k pixels, so that images differ)."""
    h, w = label_ids.shape
    for split, count in images_per_split.items():
        for k in range(count):
            stem = f"zurich_00000{k}_00001{len(split)}"
            _image(root / "leftImg8bit" / split / "zurich" / f"{stem}_leftImg8bit.png", h, w)
            _label(root / "gtFine" / split / "zurich" / f"{stem}_gtFine_labelIds.png",
                   np.roll(label_ids, k, axis=1))
    return root


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    label_ids = _ids(16, 32, [0, 7, 26, 33, 4])
    write_cityscapes(tmp_path, {"train": 1, "val": 1}, label_ids)
    city = segmentation_sets.CITYSCAPES
    ds = data.make_segmentation_dataset(tmp_path, layout="cityscapes", split=city.test_split,
                                        batch_size=1, stats=data.PipelineStats(), crop="pad",
                                        eval_frame=(16, 32), label_map=city.label_map)
    label = next(ds.as_numpy_iterator())["label"][0]
    expected = np.vectorize({0: 255, 7: 0, 26: 13, 33: 18, 4: 255}.get)(label_ids)
    np.testing.assert_array_equal(label, expected)
    assert city.num_classes == 19


def test_missing_files_are_named(voc, tmp_path):
    root, _ = voc
    with pytest.raises(FileNotFoundError, match="test.txt"):
        segmentation_sets.voc_files(root, "test")
    (tmp_path / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    _image(tmp_path / "leftImg8bit" / "val" / "x" / "x_1_leftImg8bit.png", 8, 8)
    with pytest.raises(FileNotFoundError, match="x_1_gtFine_labelIds.png"):
        segmentation_sets.cityscapes_files(tmp_path, "val")


def test_pad_frame_smaller_than_the_image_is_an_error(voc):
    root, _ = voc
    ds = data.make_segmentation_dataset(root, layout="voc", split="val", batch_size=1,
                                        stats=data.PipelineStats(), crop="pad",
                                        eval_frame=(32, 32))
    with pytest.raises(Exception, match="(?s)evaluation frame.*c.jpg"):
        next(ds.as_numpy_iterator())


def test_global_train_order_is_the_same_for_any_process_count():
    from detcon_jax.data import evaluation, sources

    def rows(index, count, batch, n=24, seed=7):
        order = evaluation.global_train_order(3, local_batch=batch, seed=seed,
                                              shard=sources.Shard(index, count))
        return np.asarray(list(order.take(n).as_numpy_iterator()))

    one = rows(0, 1, 4)
    two = [rows(i, 2, 2, 12) for i in range(2)]
    # Process p holds rows [2p, 2p + 2) of every global batch of 4.
    stacked = np.concatenate([two[0].reshape(-1, 2, 2), two[1].reshape(-1, 2, 2)], axis=1)
    np.testing.assert_array_equal(stacked.reshape(-1, 2), one)
    np.testing.assert_array_equal(one[:, 1], np.arange(24))  # stream positions
    epochs = one[:, 0].reshape(-1, 3)
    assert all(sorted(e) == [0, 1, 2] for e in epochs)  # each epoch a permutation
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled per epoch
    assert not np.array_equal(rows(0, 1, 4, seed=8)[:, 0], one[:, 0])  # keyed by the seed


def test_training_batches_are_one_global_order_for_any_process_count(voc):
    """Two processes' rows of each global batch, stacked in process order, are one process's
    batch: the same images with the same scale-jitter crops (2 images, batch 4: every batch
    spans two epochs)."""
    root, _ = voc

    def stream(index, count, batch):
        ds = data.make_segmentation_dataset(
            root, layout="voc", split="train_aug", batch_size=batch,
            stats=data.PipelineStats(), train=True, crop="jitter", image_size=32, seed=5,
            process_index=index, process_count=count)
        return list(ds.take(2).as_numpy_iterator())

    one = stream(0, 1, 4)
    two = [stream(i, 2, 2) for i in range(2)]
    for step, batch in enumerate(one):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                batch[key], np.concatenate([two[0][step][key], two[1][step][key]]),
                err_msg=f"step {step} {key}")
    assert not np.array_equal(one[0]["image"][0], one[0]["image"][1])
