"""Tests of the tf.data input pipeline: geometry alignment, sources, sharding, eval sets."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from detcon_jax import input_pipeline as ip

SIZE = 96  # output side for the property tests (small: 2 shared CPU cores)

# Region layout of the alignment image: ids increase left to right in each row, so a
# left-right flip is visible as decreasing column ids.
ROWS, COLS = 3, 4
PALETTE = np.array([[r, g, b] for r in (30, 140, 250) for g in (30, 140, 250)
                    for b in (30, 140, 250)], np.float32)[:ROWS * COLS]


def _region_image(height=120, width=160):
    """PNG whose pixel colour encodes its region id (uneven cells), and the id map."""
    ys = np.searchsorted([40, 75], np.arange(height), side="right")
    xs = np.searchsorted([30, 70, 125], np.arange(width), side="right")
    ids = (ys[:, None] * COLS + xs[None, :]).astype(np.uint8)
    image = PALETTE[ids].astype(np.uint8)
    return tf.io.encode_png(image).numpy(), ids


def _decode_ids(view):
    """Nearest palette colour per pixel -> region id."""
    dist = ((view[..., None, :] * 255.0 - PALETTE) ** 2).sum(-1)
    return dist.argmin(-1)


def _check_view(view, mask, radius=6):
    """Away from borders of the mask, the decoded colour id equals the mask id."""
    mask = mask[..., 0].astype(np.int64)
    interior = (ndimage.maximum_filter(mask, 2 * radius + 1) ==
                ndimage.minimum_filter(mask, 2 * radius + 1))
    assert interior.mean() > 0.2
    decoded = _decode_ids(view)
    np.testing.assert_array_equal(decoded[interior], mask[interior])
    assert view.min() >= 0.0 and view.max() <= 1.0


def _flipped(mask):
    """True/False if the view spans several columns (flip visible), else None."""
    cols = mask[..., 0].astype(np.int64) % COLS
    left, right = cols[:, :3].mean(), cols[:, -3:].mean()
    if abs(left - right) < 0.5:
        return None
    return bool(left > right)


@pytest.fixture(scope="module")
def region():
    return _region_image()


def test_two_views_alignment_eager_and_in_tf_data(region):
    image_bytes, ids = region
    flips = []
    outputs = [ip.two_views(image_bytes, ids, image_size=SIZE) for _ in range(16)]
    ds = tf.data.Dataset.from_tensors((image_bytes, ids)).repeat(16)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=3).batch(2)))
    ds = ds.map(lambda x, s: ip.two_views(x[0], x[1], image_size=SIZE, seed=s),
                num_parallel_calls=2)
    outputs += list(ds)
    for out in outputs:
        out = {k: v.numpy() for k, v in out.items()}
        assert out["view1"].shape == (SIZE, SIZE, 3) and out["view1"].dtype == np.float32
        assert out["mask1"].shape == (SIZE, SIZE, 1) and out["mask1"].dtype == np.uint8
        for i in (1, 2):
            _check_view(out[f"view{i}"], out[f"mask{i}"])
            flips.append(_flipped(out[f"mask{i}"]))
        assert not np.array_equal(out["view1"], out["view2"])
    seen = [f for f in flips if f is not None]
    assert len(seen) >= 30
    assert 0.25 < np.mean(seen) < 0.75, np.mean(seen)


def test_crop_window_follows_official_distribution():
    shape = tf.constant([300, 400])
    windows = np.stack([ip.random_crop_window(shape, tf.constant([i, 7])).numpy()
                        for i in range(300)])
    oh, ow, h, w = windows.T
    assert (oh >= 0).all() and (ow >= 0).all()
    assert (oh + h <= 300).all() and (ow + w <= 400).all()
    area = h * w / (300 * 400)
    assert area.min() >= 0.08 * 0.95 and area.max() <= 1.0
    ratio = w / h
    unclipped = (h < 300) & (w < 400)
    assert ratio[unclipped].min() >= 0.74 and ratio[unclipped].max() <= 1.35
    # One clipped draw, no retries: large areas hit the image border and get clipped.
    assert ((h == 300) | (w == 400)).any()
    # Stateless seeds reproduce the same window.
    a = ip.random_crop_window(shape, tf.constant([5, 5])).numpy()
    np.testing.assert_array_equal(a, ip.random_crop_window(shape, tf.constant([5, 5])).numpy())


def test_two_views_without_mask_and_with_decoded_image(region):
    image_bytes, ids = region
    out = ip.two_views(image_bytes, None, image_size=SIZE, seed=tf.constant([1, 2]))
    assert out["mask1"].numpy().max() == 0 and out["mask2"].shape == (SIZE, SIZE, 1)
    decoded = tf.io.decode_png(image_bytes, channels=3)
    again = ip.two_views(decoded, ids, image_size=SIZE, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(again["view1"].numpy(), out["view1"].numpy())
    # JPEG views are decoded window by window (decode_and_crop_jpeg, as official): same
    # geometry as a full decode cropped with the same window; pixels differ only where chroma
    # upsampling at the window's edge sees different neighbours.
    jpeg = tf.io.encode_jpeg(decoded, quality=90)
    partial = ip.two_views(jpeg, ids, image_size=SIZE, seed=tf.constant([3, 4]))
    full = ip.two_views(tf.io.decode_jpeg(jpeg, channels=3), ids, image_size=SIZE,
                        seed=tf.constant([3, 4]))
    for i in (1, 2):
        np.testing.assert_array_equal(partial[f"mask{i}"].numpy(), full[f"mask{i}"].numpy())
        diff = np.abs(partial[f"view{i}"].numpy() - full[f"view{i}"].numpy())
        assert diff.mean() < 0.01 and (diff < 1.5 / 255).mean() > 0.9


def test_mask_size_mismatch_names_the_record(region):
    image_bytes, ids = region
    with pytest.raises(tf.errors.InvalidArgumentError, match="record_42.png"):
        ip.two_views(image_bytes, ids[:-5], image_size=SIZE, name="record_42.png")


def test_grid_mask_is_made_in_the_original_frame():
    grid = ip.grid_mask(tf.constant([6, 8]), 2).numpy()[..., 0]
    expected = np.array([[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3)
    np.testing.assert_array_equal(grid, expected)
    # Grid ids correspond across views: the colour of a region image tells the grid cell.
    image_bytes, _ = _region_image(120, 160)
    batch = next(iter(ip.make_pretrain_dataset(
        "synthetic", batch_size=4, image_size=SIZE, mask_source="grid", grid_size=3, seed=0,
        deterministic=True)))
    for key in ("mask1", "mask2"):
        assert batch[key].numpy().max() < 9 and len(np.unique(batch[key].numpy())) > 1


def _batches(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_synthetic_source_gt_masks_align_and_deterministic_mode():
    kwargs = dict(batch_size=4, image_size=SIZE, mask_source="gt", seed=11, deterministic=True,
                  synthetic_num_images=8)
    a = _batches(ip.make_pretrain_dataset("synthetic", **kwargs), 2)
    b = _batches(ip.make_pretrain_dataset("synthetic", **kwargs), 2)
    c = _batches(ip.make_pretrain_dataset("synthetic", **{**kwargs, "seed": 12}), 2)
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["view1"], c[0]["view1"])
    batch = a[0]
    assert batch["label"].dtype == np.int32 and (batch["label"] == -1).all()
    # Each synthetic id has one colour: within an id (away from borders) colours are uniform.
    for i in range(4):
        mask = batch["mask1"][i, ..., 0]
        view = batch["view1"][i]
        interior = ndimage.minimum_filter(mask, 9) == ndimage.maximum_filter(mask, 9)
        for k in np.unique(mask[interior]):
            pixels = view[interior & (mask == k)]
            assert np.ptp(pixels, axis=0).max() < 0.05


def test_none_masks_keep_batch_structure():
    batch = _batches(ip.make_pretrain_dataset("synthetic", batch_size=2, image_size=SIZE,
                                              mask_source="none", seed=0), 1)[0]
    assert set(batch) == {"view1", "view2", "mask1", "mask2", "label"}
    assert batch["mask1"].shape == (2, SIZE, SIZE, 1) and batch["mask1"].max() == 0


def test_per_host_sharding_is_disjoint_and_complete():
    names = []
    for index in range(2):
        ds = ip.source_dataset("synthetic", mask_source="gt", synthetic_num_images=6,
                               process_index=index, process_count=2)
        names.append({ex["name"].numpy() for ex in ds})
    assert not names[0] & names[1] and len(names[0] | names[1]) == 6
    with pytest.raises(ValueError, match="process_index"):
        ip.source_dataset("synthetic", process_index=2, process_count=2)


def test_folder_source_on_camvid_gt(data_dir):
    root = data_dir / "camvid" / "val"
    ds = ip.make_pretrain_dataset("folder", data_dir=root, batch_size=2, image_size=SIZE,
                                  mask_source="gt", seed=0)
    batch = _batches(ds, 1)[0]
    assert batch["view1"].shape == (2, SIZE, SIZE, 3)
    assert batch["mask1"].max() <= 11 and len(np.unique(batch["mask1"])) > 2
    assert ip.num_examples("folder", data_dir=root) == 101


def _write_folder(tmp_path: pathlib.Path, n=4, corrupt=True):
    images, ids = ip.synthetic_images(n, 64, 80, seed=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(n):
        data = tf.io.encode_jpeg(images[i], quality=95).numpy()
        (tmp_path / "images" / f"im{i}.jpg").write_bytes(data)
        (tmp_path / "labels" / f"im{i}.png").write_bytes(tf.io.encode_png(ids[i][..., None])
                                                         .numpy())
    if corrupt:
        good = (tmp_path / "images" / "im0.jpg").read_bytes()
        (tmp_path / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (tmp_path / "images" / "garbage.png").write_bytes(b"not an image at all" * 10)
        for name in ("truncated", "garbage"):
            (tmp_path / "labels" / f"{name}.png").write_bytes(
                tf.io.encode_png(ids[0][..., None]).numpy())
    return images, ids


def test_folder_source_skips_and_counts_corrupt_images(tmp_path):
    _write_folder(tmp_path)
    stats = ip.PipelineStats()
    ds = ip.make_pretrain_dataset("folder", data_dir=tmp_path, batch_size=1, image_size=SIZE,
                                  mask_source="gt", repeat=False, shuffle=False, stats=stats)
    batches = _batches(ds, 10)
    assert len(batches) == 4
    assert stats.skipped == 2 and ip.num_skipped(stats) == 2
    assert sorted(pathlib.Path(n).name for n in stats.skipped_names) == [
        "garbage.png", "truncated.jpg"]


def test_folder_source_fh_on_the_fly_and_mask_mismatch(tmp_path):
    images, ids = _write_folder(tmp_path, n=2, corrupt=False)
    ds = ip.source_dataset("folder", data_dir=tmp_path, mask_source="fh", fh_scale=100,
                           fh_min_size=20)
    for ex, image in zip(ds, images, strict=True):
        decoded = ex["image"].numpy()
        expected = ip.felzenszwalb_numpy(decoded, 100, 20)
        np.testing.assert_array_equal(ex["mask"].numpy()[..., 0], expected)
        assert np.abs(decoded.astype(int) - image).mean() < 5
    (tmp_path / "labels" / "im1.png").write_bytes(tf.io.encode_png(ids[1][:30, :, None]).numpy())
    ds = ip.make_pretrain_dataset("folder", data_dir=tmp_path, batch_size=1, image_size=SIZE,
                                  mask_source="gt", shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="im1.jpg"):
        _batches(ds, 2)


def test_skimage_source_with_fh_masks():
    ds = ip.make_pretrain_dataset("skimage", batch_size=2, image_size=SIZE, mask_source="fh",
                                  shuffle=False, seed=0)
    batch = _batches(ds, 1)[0]
    assert batch["view1"].shape == (2, SIZE, SIZE, 3)
    assert len(np.unique(batch["mask1"][0])) > 1
    assert ip.num_examples("skimage") >= 5


def test_tfds_source_from_local_data_dir(tmp_path):
    import tensorflow_datasets as tfds

    with pytest.raises(FileNotFoundError, match="never downloads"):
        ip.make_pretrain_dataset("tfds", tfds_name="oxford_iiit_pet", data_dir=tmp_path,
                                 batch_size=2, mask_source="gt")
    rng = np.random.default_rng(0)
    images, ids = ip.synthetic_images(4, 96, 120, seed=2)

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensor_slices({
            "image": images, "segmentation_mask": ids[..., None],
            "label": rng.integers(0, 37, 4), "file_name": [f"pet{i}.jpg" for i in range(4)]})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds = ip.make_pretrain_dataset("tfds", tfds_name="oxford_iiit_pet", data_dir=tmp_path,
                                      batch_size=2, image_size=SIZE, mask_source="gt",
                                      shuffle=False, deterministic=True, seed=0)
        batch = _batches(ds, 1)[0]
        evals = _batches(ip.make_eval_dataset("tfds", tfds_name="oxford_iiit_pet",
                                              data_dir=tmp_path, split="train", batch_size=3,
                                              image_size=32), 5)
    assert [int(b["valid"].sum()) for b in evals] == [3, 1]
    assert evals[0]["image"].shape == (3, 32, 32, 3) and (evals[0]["label"] >= 0).all()
    assert batch["mask1"].shape == (2, SIZE, SIZE, 1)
    assert (batch["label"] >= 0).all()
    for i in range(2):  # masks follow the image: uniform colour inside every id
        mask, view = batch["mask1"][i, ..., 0], batch["view1"][i]
        interior = ndimage.minimum_filter(mask, 13) == ndimage.maximum_filter(mask, 13)
        for k in np.unique(mask[interior]):
            assert np.ptp(view[interior & (mask == k)], axis=0).max() < 0.05
    # The mocked generator's random shapes do not match: the error names the record.
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = ip.make_pretrain_dataset("tfds", tfds_name="oxford_iiit_pet", data_dir=tmp_path,
                                      batch_size=1, image_size=SIZE, mask_source="gt")
        with pytest.raises(tf.errors.InvalidArgumentError, match="oxford_iiit_pet:"):
            _batches(ds, 1)


def test_tfds_mask_merges_instances_and_panoptic_ids():
    inst = np.zeros([3, 4, 5, 1], bool)
    inst[0, :2, :2] = True
    inst[1, 1:, 3:] = True
    inst[2, 0, 0] = True  # later instance wins the overlap
    merged = ip.tfds_mask({"objects": {"segmentation": inst}}).numpy()[..., 0]
    assert merged[0, 0] == 3 and merged[1, 1] == 1 and merged[3, 4] == 2 and merged[3, 0] == 0
    rgb = np.zeros([2, 3, 3], np.uint8)
    rgb[0, 1] = [1, 2, 0]
    rgb[1, :] = [5, 0, 1]
    panoptic = ip.tfds_mask({"panoptic_image": rgb}).numpy()[..., 0]
    np.testing.assert_array_equal(panoptic, [[0, 1, 0], [2, 2, 2]])


def test_eval_dataset_cifar_center_crop_and_train_mode(data_dir):
    root = data_dir / "cifar10"
    ds = ip.make_eval_dataset("folder", data_dir=root, split="test", batch_size=96,
                              image_size=32)
    labels, valid = [], 0
    for batch in ds:
        assert batch["image"].shape == (96, 32, 32, 3)
        labels.append(batch["label"].numpy()[batch["valid"].numpy()])
        valid += int(batch["valid"].numpy().sum())
    labels = np.concatenate(labels)
    assert valid == 1000 and np.bincount(labels).tolist() == [100] * 10
    train = ip.make_eval_dataset("folder", data_dir=root, split="test", batch_size=8,
                                 image_size=32, train=True, seed=0)
    batch = next(iter(train))
    assert batch["image"].shape == (8, 32, 32, 3) and "valid" not in batch


def test_segmentation_dataset_camvid_resize_and_ignore_label(data_dir):
    root = data_dir / "camvid"
    ds = ip.make_segmentation_dataset(root, split="val", batch_size=4, image_size=SIZE,
                                      void_ids=(11,), ignore_label=255)
    batch = next(iter(ds))
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["label"].dtype == tf.int32
    first = sorted((root / "val" / "labels").glob("*.png"))[0]
    raw = tf.io.decode_png(tf.io.read_file(str(first)), channels=1)
    expected = tf.image.resize(raw, [SIZE, SIZE], "nearest").numpy()[..., 0].astype(np.int32)
    expected[expected == 11] = 255
    np.testing.assert_array_equal(batch["label"].numpy()[0], expected)
    train = ip.make_segmentation_dataset(root, split="val", batch_size=2, image_size=SIZE,
                                         train=True, seed=0)
    assert next(iter(train))["label"].shape == (2, SIZE, SIZE)


def test_num_examples_and_bad_config():
    assert ip.num_examples("synthetic", synthetic_num_images=10) == 10
    with pytest.raises(ValueError, match="source must be one of"):
        ip.make_pretrain_dataset("nope", batch_size=2)
    with pytest.raises(ValueError, match="mask_source"):
        ip.make_pretrain_dataset("synthetic", batch_size=2, mask_source="boxes")


def test_eval_random_crop_pass_keeps_file_order(data_dir):
    kwargs = dict(data_dir=data_dir / "cifar10", split="test", batch_size=50, image_size=32,
                  crop="random")
    a = next(iter(ip.make_eval_dataset("folder", seed=1, **kwargs)))
    b = next(iter(ip.make_eval_dataset("folder", seed=1, **kwargs)))
    c = next(iter(ip.make_eval_dataset("folder", seed=2, **kwargs)))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_array_equal(a["label"].numpy(), c["label"].numpy())  # same order
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    files, labels, classes = ip.class_folder_files(data_dir / "cifar10" / "test")
    assert classes[0] == "airplane" and labels[:50] == a["label"].numpy().tolist()


def test_mask_resize_equals_crop_flip_and_tf_nearest_resize():
    # The row-gather resize must pick exactly the pixels of crop -> flip -> tf.image.resize
    # (NEAREST_NEIGHBOR, half-pixel centres), the official mask path.
    rng = np.random.default_rng(0)
    mask = tf.constant(rng.integers(0, 256, (75, 100, 1)).astype(np.uint8))
    for _ in range(60):
        h, w = int(rng.integers(1, 76)), int(rng.integers(1, 101))
        oh, ow = int(rng.integers(0, 76 - h)), int(rng.integers(0, 101 - w))
        flip, size = bool(rng.integers(2)), int(rng.choice([7, 32, 96, 224]))
        reference = mask[oh:oh + h, ow:ow + w]
        if flip:
            reference = tf.reverse(reference, [1])
        reference = tf.image.resize(reference, [size, size], "nearest")
        ours = ip._resize_mask(mask, tf.constant([oh, ow, h, w]), tf.constant(flip), size)
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())


def test_two_views_decode_once_matches_per_view_pipeline():
    # Decoding the windows' bounding box once and slicing gives the views of a full decode
    # cropped per window (the official per-view path, up to JPEG edge effects, is checked
    # above): bicubic of the same pixels, clipped, and the same masks.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)
    ids = rng.integers(0, 20, (90, 120)).astype(np.uint8)
    png = tf.io.encode_png(image)
    seed = tf.constant([4, 2])
    out = ip.two_views(png, ids, image_size=SIZE, seed=seed)
    u = tf.random.stateless_uniform([2, 5], seed)
    windows = ip._windows_from_uniforms(tf.constant([90, 120]), u).numpy()
    for i, (oh, ow, h, w) in enumerate(windows):
        crop, mask = image[oh:oh + h, ow:ow + w], ids[oh:oh + h, ow:ow + w, None]
        if u[i, 4] < 0.5:
            crop, mask = crop[:, ::-1], mask[:, ::-1]
        view = tf.clip_by_value(tf.image.resize(crop, [SIZE, SIZE], "bicubic") / 255.0, 0, 1)
        np.testing.assert_array_equal(out[f"view{i + 1}"].numpy(), view.numpy())
        np.testing.assert_array_equal(out[f"mask{i + 1}"].numpy(),
                                      tf.image.resize(mask, [SIZE, SIZE], "nearest").numpy())


def test_image_crop_and_flip_at_the_image_edges():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    for ow, w in [(0, 50), (0, 10), (5, 45), (49, 1), (0, 1)]:
        for flip in (True, False):
            ours = ip._resize_image(tf.constant(image), tf.constant([3, ow, 20, w]),
                                    tf.constant(flip), 16).numpy()
            crop = image[3:23, ow:ow + w]
            crop = crop[:, ::-1] if flip else crop
            reference = tf.clip_by_value(tf.image.resize(crop, [16, 16], "bicubic") / 255, 0, 1)
            np.testing.assert_array_equal(ours, reference.numpy(), err_msg=f"{ow} {w} {flip}")


def test_skip_batches_resumes_the_same_stream_and_unseeded_runs_differ():
    kwargs = dict(batch_size=2, image_size=32, mask_source="gt", seed=5, deterministic=True,
                  synthetic_num_images=6)
    full = _batches(ip.make_pretrain_dataset("synthetic", **kwargs), 5)
    resumed = _batches(ip.make_pretrain_dataset("synthetic", skip_batches=3, **kwargs), 2)
    for x, y in zip(full[3:], resumed, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # Without a seed each run draws its own augmentation stream.
    unseeded = {**kwargs, "seed": None}
    a = _batches(ip.make_pretrain_dataset("synthetic", **unseeded), 1)[0]
    b = _batches(ip.make_pretrain_dataset("synthetic", **unseeded), 1)[0]
    assert not np.array_equal(a["view1"], b["view1"])


@pytest.mark.parametrize("chroma_downsampling", [True, False])
def test_jpeg_region_with_aligned_left_edge_has_the_exact_boxes_pixels(chroma_downsampling):
    # The decoded region starts at a multiple of 16 px; every window's pixels must equal those
    # of a decode of the windows' exact bounding box (what an unaligned request returns).
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.integers(0, 256, (75, 110, 3)).astype(np.float32),
                                    (1.5, 1.5, 0)).astype(np.uint8)
    data = tf.io.encode_jpeg(image, quality=90, chroma_downsampling=chroma_downsampling)
    source = ip._Source(data)
    for _ in range(25):
        windows = ip._windows_from_uniforms(tf.constant([75, 110]),
                                            tf.constant(rng.random((2, 4)), tf.float32))
        pixels, origin = source.region(windows)
        top = tf.reduce_min(windows[:, :2], axis=0)
        bottom = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
        exact = tf.io.decode_and_crop_jpeg(data, tf.concat([top, bottom - top], 0), channels=3)
        for oh, ow, h, w in windows.numpy():
            np.testing.assert_array_equal(
                ip._crop(pixels, [oh - origin[0], ow - origin[1], h, w]).numpy(),
                ip._crop(exact, [oh - top[0], ow - top[1], h, w]).numpy())


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
        assert bool(ip.is_valid_encoded_image(tf.constant(data))) == expected, name
