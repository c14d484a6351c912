"""Tests of the mask picture tool."""

import numpy as np
from PIL import Image

from detcon_jax import visualize


def test_visualize_writes_a_grid_with_overlaid_masks(tmp_path):
    path = visualize.main([f"--output={tmp_path / 'grid.png'}", "--source=synthetic",
                           "--mask_source=gt", "--num_images=2", "--image_size=96",
                           "--tile=96"])
    grid = np.asarray(Image.open(path).convert("RGB"))
    header = 18
    assert grid.shape == (header + 2 * 96, 4 * 96, 3)
    raw, overlaid = grid[header:header + 96, :96], grid[header:header + 96, 96:192]
    assert np.abs(raw.astype(int) - overlaid).mean() > 5  # the mask colours show
    for c in (2, 3):  # both views are drawn, and they differ
        assert grid[header:, c * 96:(c + 1) * 96].std() > 10
    assert not np.array_equal(grid[header:, 192:288], grid[header:, 288:])


def test_overlay_colours_follow_mask_ids():
    image = np.zeros([8, 8, 3])
    mask = np.zeros([8, 8], np.uint8)
    mask[:, 4:] = 7
    out = visualize.overlay(image, mask, alpha=1.0)
    colours = visualize.palette()
    np.testing.assert_allclose(out[4, 1] / 255, colours[0], atol=1 / 255)
    np.testing.assert_allclose(out[4, 6] / 255, colours[7], atol=1 / 255)
    assert (out[:, 4] == 255).all()  # region border drawn in white
