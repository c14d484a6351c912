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


def _official_windows(shape, u):
    """The official `get_random_crop_window` arithmetic (float32, tf.round = half to even) on
    given uniforms: area fraction 0.08 + 0.92 u0, log aspect ratio log(3/4) + log(16/9) u1, one
    draw clipped to the image; the integer offsets uniform over W - w + 1 (H - h + 1)
    positions, i.e. floor(u2 (W - w + 1)) (floor(u3 (H - h + 1)))."""
    height, width = int(shape[0]), int(shape[1])
    u = np.asarray(u, np.float32)
    f32 = np.float32
    area = f32(height * width)
    target = (f32(0.08) + f32(1.0 - 0.08) * u[:, 0]) * area
    low, high = f32(np.log(3 / 4)), f32(np.log(4 / 3))
    ratio = np.exp(low + (high - low) * u[:, 1]).astype(f32)
    w = np.minimum(np.rint(np.sqrt(target * ratio)).astype(np.int32), width)
    h = np.minimum(np.rint(np.sqrt(target / ratio)).astype(np.int32), height)
    offset_w = np.floor(u[:, 2] * (width - w + 1).astype(f32)).astype(np.int32)
    offset_h = np.floor(u[:, 3] * (height - h + 1).astype(f32)).astype(np.int32)
    return np.stack([offset_h, offset_w, h, w], axis=1)


def test_crop_window_follows_official_distribution(golden_dir):
    # The official formula on the same uniforms, for random uniforms and image shapes.
    rng = np.random.default_rng(0)
    for shape in ((300, 400), (33, 47), (1000, 100), (64, 64)):
        u = rng.random((200, 4), np.float32)
        ours = ip._windows_from_uniforms(tf.constant(shape), tf.constant(u)).numpy()
        np.testing.assert_array_equal(ours, _official_windows(shape, u), err_msg=str(shape))
    # The official function's own windows (golden/aux/crop_windows.npz: its recorded draws,
    # replayed), from the uniforms that give those draws.
    golden = np.load(golden_dir / "aux" / "crop_windows.npz")
    low, high = np.log(3 / 4), np.log(4 / 3)
    u = np.stack([(golden["draw_area_frac"].astype(np.float64) - 0.08) / 0.92,
                  (golden["draw_log_aspect"].astype(np.float64) - low) / (high - low),
                  (golden["draw_offset_w"] + 0.5) / golden["offset_w_maxval"],
                  (golden["draw_offset_h"] + 0.5) / golden["offset_h_maxval"]], axis=1)
    for shape, uniforms, window in zip(golden["image_hw"], u, golden["window"], strict=True):
        ours = ip._windows_from_uniforms(tf.constant(shape),
                                         tf.constant(uniforms[None], tf.float32)).numpy()[0]
        np.testing.assert_array_equal(ours, window, err_msg=str(shape))
    # random_crop_window draws them statelessly: the same seed gives the same window.
    shape = tf.constant([300, 400])
    a = ip.random_crop_window(shape, tf.constant([5, 5])).numpy()
    np.testing.assert_array_equal(a, ip.random_crop_window(shape, tf.constant([5, 5])).numpy())
    assert not np.array_equal(a, ip.random_crop_window(shape, tf.constant([5, 6])).numpy())


def test_two_views_without_mask_and_with_decoded_image(region, data_dir):
    image_bytes, ids = region
    out = ip.two_views(image_bytes, None, image_size=SIZE, seed=tf.constant([1, 2]))
    assert out["mask1"].numpy().max() == 0 and out["mask2"].shape == (SIZE, SIZE, 1)
    decoded = tf.io.decode_png(image_bytes, channels=3)
    again = ip.two_views(decoded, ids, image_size=SIZE, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(again["view1"].numpy(), out["view1"].numpy())
    # A JPEG is decoded once for both views (the windows' bounding box); the official code
    # decodes each window (decode_and_crop_jpeg). The README states what that changes on
    # real photos: a few pixels along the windows' edges, by at most 2-6/255, ~0.1 % of the
    # pixels. Checked here against the official per-view path on CamVid photos, same windows
    # and flips: masks equal, |difference| <= 6/255 everywhere, and at most 0.1 % of the
    # pixels differ (by more than half a level) over all views.
    differing, total = 0, 0
    for photo in sorted((data_dir / "camvid" / "val" / "images").iterdir())[:3]:
        jpeg = photo.read_bytes()
        shape = tf.shape(tf.io.decode_jpeg(jpeg))[:2]
        labels = np.zeros(shape.numpy(), np.uint8)
        labels[:, shape[1] // 2:] = 1
        for seed in range(6):
            seed = tf.constant([seed, 4])
            ours = ip.two_views(jpeg, labels, image_size=SIZE, seed=seed)
            u = tf.random.stateless_uniform([2, 5], seed)
            for i, (oh, ow, h, w) in enumerate(ip._windows_from_uniforms(shape, u).numpy()):
                crop = tf.io.decode_and_crop_jpeg(jpeg, [oh, ow, h, w], channels=3)
                mask = labels[oh:oh + h, ow:ow + w, None]
                if u[i, 4] < 0.5:
                    crop, mask = crop[:, ::-1], mask[:, ::-1]
                view = tf.clip_by_value(tf.image.resize(crop, [SIZE, SIZE], "bicubic") / 255,
                                        0, 1).numpy()
                np.testing.assert_array_equal(
                    ours[f"mask{i + 1}"].numpy(),
                    tf.image.resize(mask, [SIZE, SIZE], "nearest").numpy())
                diff = np.abs(ours[f"view{i + 1}"].numpy() - view)
                assert diff.max() <= 6 / 255, (photo.name, int(seed[0]), i, diff.max() * 255)
                differing += int((diff > 0.5 / 255).sum())
                total += diff.size
    assert differing <= 1e-3 * total, differing / total


def test_mask_size_mismatch_names_the_record(region):
    image_bytes, ids = region
    with pytest.raises(tf.errors.InvalidArgumentError, match="record_42.png"):
        ip.two_views(image_bytes, ids[:-5], image_size=SIZE, name="record_42.png")


def test_grid_mask_is_made_in_the_original_frame(tmp_path):
    grid = ip.grid_mask(tf.constant([6, 8]), 2).numpy()[..., 0]
    expected = np.array([[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3)
    np.testing.assert_array_equal(grid, expected)
    # Grid ids correspond across views: an image whose colour codes its 3 x 3 grid cell
    # (cell k painted PALETTE[k], cells of the original image) goes through the pipeline
    # with mask_source='grid'; in every view, cropped and flipped as it is, the colour
    # tells the mask id away from cell borders.
    height, width = 120, 160
    cells = (np.arange(height)[:, None] * 3 // height) * 3 + np.arange(width)[None, :] * 3 // width
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "grid.png").write_bytes(
        tf.io.encode_png(PALETTE[cells].astype(np.uint8)).numpy())
    ds = ip.make_pretrain_dataset("folder", data_dir=tmp_path, batch_size=4, image_size=SIZE,
                                  mask_source="grid", grid_size=3, seed=0, deterministic=True)
    ids_seen = set()
    for batch in _batches(ds, 3):
        for i in range(4):
            for v in (1, 2):
                _check_view(batch[f"view{v}"][i], batch[f"mask{v}"][i])
                ids_seen.update(np.unique(batch[f"mask{v}"][i]).tolist())
    assert len(ids_seen) >= 6 and max(ids_seen) < 9, ids_seen


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
