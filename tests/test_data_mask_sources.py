"""Tests of the mask sources: grid, none, Felzenszwalb on the fly."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import PALETTE, SIZE, check_view, configs, take_batches, write_folder

from detcon_jax.data import PipelineStats, mask_sources, pretrain


def test_grid_mask_is_made_in_the_original_frame(tmp_path):
    grid = mask_sources.grid_mask(tf.constant([6, 8]), 2).numpy()[..., 0]
    expected = np.array([[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3)
    np.testing.assert_array_equal(grid, expected)
    # Grid ids correspond across views: an image whose colour codes its 3 x 3 grid cell
    # (cell k painted PALETTE[k], cells of the original image) goes through the pipeline
    # with masks.source='grid'; in every view, cropped and flipped as it is, the colour
    # tells the mask id away from cell borders.
    height, width = 120, 160
    cells = (np.arange(height)[:, None] * 3 // height) * 3 + np.arange(width)[None, :] * 3 // width
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "grid.png").write_bytes(
        tf.io.encode_png(PALETTE[cells].astype(np.uint8)).numpy())
    ds = pretrain.make_pretrain_dataset(
        *configs("folder", "grid", grid_size=3, path=str(tmp_path), image_size=SIZE,
                 deterministic=True), batch_size=4, seed=0, stats=PipelineStats())
    ids_seen = set()
    for batch in take_batches(ds, 3):
        for i in range(4):
            for v in (1, 2):
                check_view(batch[f"view{v}"][i], batch[f"mask{v}"][i])
                ids_seen.update(np.unique(batch[f"mask{v}"][i]).tolist())
    assert len(ids_seen) >= 6 and max(ids_seen) < 9, ids_seen


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
