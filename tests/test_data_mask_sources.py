"""Tests of the mask sources: grid, none, Felzenszwalb on the fly."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import SIZE, configs, take_batches, write_folder

from detcon_jax.data import PipelineStats, mask_sources, pretrain


def test_grid_mask_is_made_in_the_original_frame():
    grid = mask_sources.grid_mask(tf.constant([6, 8]), 2).numpy()[..., 0]
    expected = np.array([[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3)
    np.testing.assert_array_equal(grid, expected)
    # Grid ids correspond across views: every view's ids are cells of the original's grid.
    batch = next(iter(pretrain.make_pretrain_dataset(
        *configs("synthetic", "grid", grid_size=3, image_size=SIZE, deterministic=True),
        batch_size=4, seed=0, stats=PipelineStats())))
    for key in ("mask1", "mask2"):
        assert batch[key].numpy().max() < 9 and len(np.unique(batch[key].numpy())) > 1


def test_none_masks_keep_batch_structure():
    batch = take_batches(pretrain.make_pretrain_dataset(
        *configs("synthetic", "none", image_size=SIZE), batch_size=2, seed=0,
        stats=PipelineStats()), 1)[0]
    assert set(batch) == {"view1", "view2", "mask1", "mask2", "label"}
    assert batch["mask1"].shape == (2, SIZE, SIZE, 1) and batch["mask1"].max() == 0


def test_folder_source_fh_on_the_fly_and_mask_mismatch(tmp_path):
    images, ids = write_folder(tmp_path, n=2, corrupt=False)
    ds = pretrain.source_dataset(
        *configs("folder", "fh", path=str(tmp_path), fh_scale=100.0, fh_min_size=20),
        stats=PipelineStats())
    for ex, image in zip(ds, images, strict=True):
        decoded = ex["image"].numpy()
        expected = mask_sources.felzenszwalb_numpy(decoded, 100, 20)
        np.testing.assert_array_equal(ex["mask"].numpy()[..., 0], expected)
        assert np.abs(decoded.astype(int) - image).mean() < 5
    (tmp_path / "labels" / "im1.png").write_bytes(tf.io.encode_png(ids[1][:30, :, None]).numpy())
    ds = pretrain.make_pretrain_dataset(
        *configs("folder", "gt", path=str(tmp_path), image_size=SIZE), batch_size=1,
        shuffle=False, stats=PipelineStats())
    with pytest.raises(tf.errors.InvalidArgumentError, match="im1.jpg"):
        take_batches(ds, 2)
