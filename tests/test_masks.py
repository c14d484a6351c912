"""Tests for detcon_jax.masks: golden binary masks, sampling properties, pooling, grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import f32_tolerance

from detcon_jax import masks as M


def _official_binary_masks_np(seg, downsample, max_mask_id=256):
    """Plain numpy transcription of the official algorithm (float one-hot, mean, argmax)."""
    seg = np.asarray(seg).reshape(seg.shape[0], seg.shape[1], seg.shape[2]).astype(np.int64)
    b, h, w = seg.shape
    one_hot = (seg[..., None] == np.arange(max_mask_id)).astype(np.float32)
    pooled = one_hot.reshape(b, h // downsample, downsample, w // downsample, downsample,
                             max_mask_id).mean(axis=(2, 4))
    winner = pooled.reshape(b, -1, max_mask_id).argmax(-1)
    return np.eye(max_mask_id, dtype=np.float32)[winner].transpose(0, 2, 1)


# ----------------------------------------------------------------------------- binary_masks


@pytest.mark.parametrize("case", [0, 1])
def test_binary_masks_match_golden_exactly(golden_dir, case):
    data = np.load(golden_dir / f"binary_mask_case{case}.npz")
    assert int(data["max_mask_id"]) == 256
    seg, downsample = data["masks"], int(data["downsample"])
    expected = data["binary_mask"]
    out = M.binary_masks(seg, downsample=downsample)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), expected)
    # [B, H, W] input and wider int dtypes give the same answer.
    out3 = jax.jit(lambda s: M.binary_masks(s, downsample=downsample))(
        seg[..., 0].astype(np.int32))
    np.testing.assert_array_equal(np.asarray(out3), expected)


def test_binary_masks_ties_go_to_lowest_id():
    # One 2x2 cell split evenly between ids 7 and 3, another between 200 and 255.
    seg = np.array([[[7, 7, 200, 255], [3, 3, 255, 200]]], np.uint8)
    out = np.asarray(M.binary_masks(seg, downsample=2))
    assert out.shape == (1, 256, 2)
    assert out[0, :, 0].argmax() == 3 and out[0, :, 0].sum() == 1
    assert out[0, :, 1].argmax() == 200 and out[0, :, 1].sum() == 1


def test_binary_masks_random_and_out_of_range_ids_match_official_formula():
    rng = np.random.default_rng(0)
    # Few ids so that ties are frequent; ids >= max_mask_id or < 0 match no mask.
    seg = rng.integers(-2, 12, size=(3, 24, 16)).astype(np.int32)
    for downsample, max_id in [(4, 10), (8, 16), (2, 256)]:
        expected = _official_binary_masks_np(seg, downsample, max_id)
        out = M.binary_masks(seg, downsample=downsample, max_mask_id=max_id)
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_binary_masks_never_materialises_the_pixel_one_hot():
    seg = jax.ShapeDtypeStruct((4, 224, 224, 1), jnp.uint8)
    compiled = jax.jit(lambda s: M.binary_masks(s, downsample=32)).lower(seg).compile()
    one_hot_bytes = 4 * 224 * 224 * 256 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < one_hot_bytes // 100


def test_binary_masks_errors():
    with pytest.raises(ValueError, match="multiples of downsample=32"):
        M.binary_masks(np.zeros((1, 100, 96, 1), np.uint8), downsample=32)
    with pytest.raises(ValueError, match=r"\[B, H, W\] or \[B, H, W, 1\]"):
        M.binary_masks(np.zeros((1, 64, 64, 3), np.uint8), downsample=32)
    with pytest.raises(ValueError, match=r"\[B, H, W\] or \[B, H, W, 1\]"):
        M.binary_masks(np.zeros((64, 64), np.uint8), downsample=32)
    with pytest.raises(ValueError, match="integer ids"):
        M.binary_masks(np.zeros((1, 64, 64), np.float32), downsample=32)


# ----------------------------------------------------------------------------- sampling


def _masks_with_present(present_sets, num_ids=256, cells=49):
    """Binary masks whose present ids per image are exactly ``present_sets``."""
    out = np.zeros((len(present_sets), num_ids, cells), np.float32)
    for b, ids in enumerate(present_sets):
        for c in range(cells):
            out[b, ids[c % len(ids)], c] = 1.0
    return jnp.asarray(out)


_PRESENT = [[0, 5, 17], [255], [3, 4, 9, 100, 101, 250, 254], list(range(0, 40, 2))]


def test_sample_mask_ids_shape_dtype_and_determinism():
    bm = _masks_with_present(_PRESENT)
    ids = M.sample_mask_ids(jax.random.key(1), bm, num_samples=16)
    assert ids.shape == (4, 16) and ids.dtype == jnp.int32
    again = jax.jit(M.sample_mask_ids, static_argnums=2)(jax.random.key(1), bm, 16)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(again))
    other = M.sample_mask_ids(jax.random.key(2), bm, num_samples=16)
    assert not np.array_equal(np.asarray(ids), np.asarray(other))
    assert M.sample_mask_ids(jax.random.key(1), bm, num_samples=5).shape == (4, 5)


def test_sample_mask_ids_only_present_ids_and_all_reachable():
    bm = _masks_with_present(_PRESENT)
    keys = jax.random.split(jax.random.key(0), 400)
    ids = np.asarray(jax.vmap(lambda k: M.sample_mask_ids(k, bm))(keys))  # [400, B, 16]
    for b, present in enumerate(_PRESENT):
        drawn, counts = np.unique(ids[:, b], return_counts=True)
        assert set(drawn.tolist()) == set(present)
        # Uniform among present ids: 6400 draws per image, every count within 5 binomial
        # standard deviations of its expectation (deterministic keys, so not flaky).
        expected = ids[:, b].size / len(present)
        sigma = np.sqrt(expected * (1 - 1 / len(present)))
        assert np.all(np.abs(counts - expected) <= 5 * sigma), counts


def test_sample_mask_ids_from_real_binary_masks(golden_dir):
    data = np.load(golden_dir / "binary_mask_case1.npz")
    bm = M.binary_masks(data["masks"], downsample=int(data["downsample"]))
    present = np.asarray(bm.sum(-1) > 0)
    keys = jax.random.split(jax.random.key(3), 300)
    ids = np.asarray(jax.vmap(lambda k: M.sample_mask_ids(k, bm))(keys))
    for b in range(bm.shape[0]):
        assert set(np.unique(ids[:, b]).tolist()) == set(np.flatnonzero(present[b]).tolist())


def test_sample_mask_ids_reproduce_official_draws_for_same_key():
    """The official categorical over log(exists + 1e-11) draws the same ids per key."""
    bm = _masks_with_present(_PRESENT)
    exists = (bm.sum(-1) > 1e-3).astype(jnp.float32) + 1e-11
    official_logits = jnp.log(exists / exists.sum(1, keepdims=True))
    for seed in range(20):
        key = jax.random.key(seed)
        official = jax.random.categorical(key, official_logits, axis=-1, shape=(16, 4)).T
        np.testing.assert_array_equal(
            np.asarray(M.sample_mask_ids(key, bm)), np.asarray(official))


def test_gather_masks_matches_loop():
    rng = np.random.default_rng(0)
    bm = rng.random((3, 10, 6)).astype(np.float32)
    ids = rng.integers(0, 10, (3, 4))
    expected = np.stack([bm[b][ids[b]] for b in range(3)])
    np.testing.assert_array_equal(np.asarray(M.gather_masks(bm, ids)), expected)


# ----------------------------------------------------------------------------- pooling


def test_masked_pool_hand_case():
    # Grid 2x2, C=2. Features per cell (row-major): [1,10], [2,20], [3,30], [4,40].
    features = np.array([[[[1, 10], [2, 20]], [[3, 30], [4, 40]]]], np.float32)
    masks = np.array([[[1, 1, 0, 0],     # top row -> mean of cells 0,1
                       [0, 0, 0, 1],     # single cell
                       [0, 0, 0, 0],     # empty -> zeros (area clamped to 1)
                       [1, 1, 1, 1]]], np.float32)
    expected = np.array([[[1.5, 15], [4, 40], [0, 0], [2.5, 25]]], np.float32)
    out = M.masked_pool(features, masks)
    # Sums of at most 4 cells, then a division: f32_tolerance(4, depth=2).
    tol = f32_tolerance(4, depth=2)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=tol)
    out_flat = M.masked_pool(features.reshape(1, 4, 2), masks)
    np.testing.assert_allclose(np.asarray(out_flat), expected, rtol=tol)
    with pytest.raises(ValueError, match="must share P"):
        M.masked_pool(features, masks[..., :3])


# ----------------------------------------------------------------------------- grids


def test_grid_segmentation_hand_case():
    grid = np.asarray(M.grid_segmentation(4, 6, 2))
    expected = np.array([[0, 0, 0, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1],
                         [2, 2, 2, 3, 3, 3],
                         [2, 2, 2, 3, 3, 3]])
    assert grid.dtype == np.int32
    np.testing.assert_array_equal(grid, expected)
    # Uneven split: 5 rows into 2 cells -> rows {0,1,2} and {3,4}.
    np.testing.assert_array_equal(np.asarray(M.grid_segmentation(5, 2, 2))[:, 0],
                                  [0, 0, 0, 2, 2])


def test_grid_segmentation_gives_one_mask_per_feature_cell():
    seg = M.grid_segmentation(224, 224, 7)[None]
    bm = np.asarray(M.binary_masks(seg, downsample=32))
    np.testing.assert_array_equal(bm[0, :49], np.eye(49, dtype=np.float32))
    assert bm[0, 49:].sum() == 0


def test_grid_segmentation_errors():
    with pytest.raises(ValueError, match="grid_size=0"):
        M.grid_segmentation(32, 32, 0)
    with pytest.raises(ValueError, match="grid_size=40"):
        M.grid_segmentation(32, 32, 40)


def test_cell_ids_and_present_id_counts_on_a_hand_case():
    # Two images of 4x4 pixels pooled 2x2 -> 2x2 cells: image 0 has ids 3 and 5, image 1
    # only id 0.
    seg = np.zeros([2, 4, 4], np.uint8)
    seg[0] = 3
    seg[0, :, 2:] = 5
    binary = M.binary_masks(seg, downsample=2, max_mask_id=8)
    np.testing.assert_array_equal(M.cell_ids(binary), [[3, 5, 3, 5], [0, 0, 0, 0]])
    np.testing.assert_array_equal(M.num_present_ids(binary), [2, 1])


def test_positive_fraction_counts_regions_with_the_same_id_in_the_other_view():
    ids1 = np.array([[1, 1, 2, 3], [0, 0, 0, 0]])
    ids2 = np.array([[1, 4, 4, 4], [5, 5, 5, 5]])
    # View 1: image 0 has 2 of 4 regions in view 2, image 1 none; view 2: 1 of 4 and none.
    assert float(M.positive_fraction(ids1, ids2)) == (2 / 8 + 1 / 8) / 2
    assert float(M.positive_fraction(ids1, ids1)) == 1.0
