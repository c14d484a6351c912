"""Tests of the two-view geometry: alignment of views and masks, crop windows, resizes."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import PALETTE, SIZE, check_view
from scipy import ndimage

from detcon_jax.data import geometry

# Region layout of the alignment image: ids increase left to right in each row, so a
# left-right flip is visible as decreasing column ids.
ROWS, COLS = 3, 4


def _region_image(height=120, width=160):
    """PNG whose pixel colour encodes its region id (uneven cells), and the id map."""
    ys = np.searchsorted([40, 75], np.arange(height), side="right")
    xs = np.searchsorted([30, 70, 125], np.arange(width), side="right")
    ids = (ys[:, None] * COLS + xs[None, :]).astype(np.uint8)
    image = PALETTE[ids].astype(np.uint8)
    return tf.io.encode_png(image).numpy(), ids


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
    outputs = [geometry.two_views(image_bytes, ids, image_size=SIZE) for _ in range(16)]
    ds = tf.data.Dataset.from_tensors((image_bytes, ids)).repeat(16)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=3).batch(2)))
    ds = ds.map(lambda x, s: geometry.two_views(x[0], x[1], image_size=SIZE, seed=s),
                num_parallel_calls=2)
    outputs += list(ds)
    for out in outputs:
        out = {k: v.numpy() for k, v in out.items()}
        assert out["view1"].shape == (SIZE, SIZE, 3) and out["view1"].dtype == np.float32
        assert out["mask1"].shape == (SIZE, SIZE, 1) and out["mask1"].dtype == np.uint8
        for i in (1, 2):
            check_view(out[f"view{i}"], out[f"mask{i}"])
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
        ours = geometry._windows_from_uniforms(tf.constant(shape), tf.constant(u)).numpy()
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
        ours = geometry._windows_from_uniforms(
            tf.constant(shape), tf.constant(uniforms[None], tf.float32)).numpy()[0]
        np.testing.assert_array_equal(ours, window, err_msg=str(shape))
    # random_crop_window draws them statelessly: the same seed gives the same window.
    shape = tf.constant([300, 400])
    a = geometry.random_crop_window(shape, tf.constant([5, 5])).numpy()
    np.testing.assert_array_equal(
        a, geometry.random_crop_window(shape, tf.constant([5, 5])).numpy())
    assert not np.array_equal(
        a, geometry.random_crop_window(shape, tf.constant([5, 6])).numpy())


def test_two_views_without_mask_and_with_decoded_image(region, data_dir):
    image_bytes, ids = region
    out = geometry.two_views(image_bytes, None, image_size=SIZE, seed=tf.constant([1, 2]))
    assert out["mask1"].numpy().max() == 0 and out["mask2"].shape == (SIZE, SIZE, 1)
    decoded = tf.io.decode_png(image_bytes, channels=3)
    again = geometry.two_views(decoded, ids, image_size=SIZE, seed=tf.constant([1, 2]))
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
            ours = geometry.two_views(jpeg, labels, image_size=SIZE, seed=seed)
            u = tf.random.stateless_uniform([2, 5], seed)
            windows = geometry._windows_from_uniforms(shape, u).numpy()
            for i, (oh, ow, h, w) in enumerate(windows):
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
        geometry.two_views(image_bytes, ids[:-5], image_size=SIZE, name="record_42.png")


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
        ours = geometry._resize_mask(mask, tf.constant([oh, ow, h, w]), tf.constant(flip),
                                     size)
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
    out = geometry.two_views(png, ids, image_size=SIZE, seed=seed)
    u = tf.random.stateless_uniform([2, 5], seed)
    windows = geometry._windows_from_uniforms(tf.constant([90, 120]), u).numpy()
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
            ours = geometry._resize_image(tf.constant(image), tf.constant([3, ow, 20, w]),
                                    tf.constant(flip), 16).numpy()
            crop = image[3:23, ow:ow + w]
            crop = crop[:, ::-1] if flip else crop
            reference = tf.clip_by_value(tf.image.resize(crop, [16, 16], "bicubic") / 255, 0, 1)
            np.testing.assert_array_equal(ours, reference.numpy(), err_msg=f"{ow} {w} {flip}")


@pytest.mark.parametrize("chroma_downsampling", [True, False])
def test_jpeg_region_with_aligned_left_edge_has_the_exact_boxes_pixels(chroma_downsampling):
    # The decoded region starts at a multiple of 16 px; every window's pixels must equal those
    # of a decode of the windows' exact bounding box (what an unaligned request returns).
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.integers(0, 256, (75, 110, 3)).astype(np.float32),
                                    (1.5, 1.5, 0)).astype(np.uint8)
    data = tf.io.encode_jpeg(image, quality=90, chroma_downsampling=chroma_downsampling)
    source = geometry._CropDecoder(data)
    for _ in range(25):
        windows = geometry._windows_from_uniforms(tf.constant([75, 110]),
                                                  tf.constant(rng.random((2, 4)), tf.float32))
        pixels, origin = source.region(windows)
        top = tf.reduce_min(windows[:, :2], axis=0)
        bottom = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
        exact = tf.io.decode_and_crop_jpeg(data, tf.concat([top, bottom - top], 0), channels=3)
        for oh, ow, h, w in windows.numpy():
            np.testing.assert_array_equal(
                geometry._crop(pixels, [oh - origin[0], ow - origin[1], h, w]).numpy(),
                geometry._crop(exact, [oh - top[0], ow - top[1], h, w]).numpy())
