"""Tests of the two-view geometry: alignment of views and masks, crop windows, resizes."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import SIZE
from scipy import ndimage

from detcon_jax.data import geometry

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
            _check_view(out[f"view{i}"], out[f"mask{i}"])
            flips.append(_flipped(out[f"mask{i}"]))
        assert not np.array_equal(out["view1"], out["view2"])
    seen = [f for f in flips if f is not None]
    assert len(seen) >= 30
    assert 0.25 < np.mean(seen) < 0.75, np.mean(seen)


def test_crop_window_follows_official_distribution():
    shape = tf.constant([300, 400])
    windows = np.stack([geometry.random_crop_window(shape, tf.constant([i, 7])).numpy()
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
    a = geometry.random_crop_window(shape, tf.constant([5, 5])).numpy()
    np.testing.assert_array_equal(
        a, geometry.random_crop_window(shape, tf.constant([5, 5])).numpy())


def test_two_views_without_mask_and_with_decoded_image(region):
    image_bytes, ids = region
    out = geometry.two_views(image_bytes, None, image_size=SIZE, seed=tf.constant([1, 2]))
    assert out["mask1"].numpy().max() == 0 and out["mask2"].shape == (SIZE, SIZE, 1)
    decoded = tf.io.decode_png(image_bytes, channels=3)
    again = geometry.two_views(decoded, ids, image_size=SIZE, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(again["view1"].numpy(), out["view1"].numpy())
    # JPEG views are decoded window by window (decode_and_crop_jpeg, as official): same
    # geometry as a full decode cropped with the same window; pixels differ only where chroma
    # upsampling at the window's edge sees different neighbours.
    jpeg = tf.io.encode_jpeg(decoded, quality=90)
    partial = geometry.two_views(jpeg, ids, image_size=SIZE, seed=tf.constant([3, 4]))
    full = geometry.two_views(tf.io.decode_jpeg(jpeg, channels=3), ids, image_size=SIZE,
                        seed=tf.constant([3, 4]))
    for i in (1, 2):
        np.testing.assert_array_equal(partial[f"mask{i}"].numpy(), full[f"mask{i}"].numpy())
        diff = np.abs(partial[f"view{i}"].numpy() - full[f"view{i}"].numpy())
        assert diff.mean() < 0.01 and (diff < 1.5 / 255).mean() > 0.9


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
