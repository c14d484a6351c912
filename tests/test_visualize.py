"""Tests of the mask picture tool and the shared picture code (``mask_pictures``).

One JAX run of the tool (synthetic images, 96 px, 2 images); the rest is host code.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage.segmentation import find_boundaries

from detcon_jax import data as data_lib
from detcon_jax import mask_pictures, visualize


def _tiles(grid: np.ndarray, tile: int, rows: int) -> np.ndarray:
    """``[rows, columns, tile, tile, 3]`` tiles under the header of a picture grid."""
    body = grid[grid.shape[0] - rows * tile:]
    cols = grid.shape[1] // tile
    return body.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4)


def test_visualize_draws_the_loss_panel_of_augmented_views(tmp_path):
    size = 96
    path = visualize.main([f"--output={tmp_path / 'grid.png'}", "--source=synthetic",
                           "--mask_source=gt", "--num_images=2", f"--image_size={size}",
                           f"--tile={size}"])
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[1] == len(visualize.COLUMNS) * size == 8 * size
    tiles = _tiles(grid, size, 2).astype(int)
    assert np.abs(tiles[0, 0] - tiles[0, 1]).mean() > 5  # the mask colours show
    # The views are the training crops (the same seeds as data.two_views here), after the
    # photometric augmentations: the mask overlay's borders are the crop's mask borders,
    # and the view's pixels are not the crop's.
    config = visualize.build_config(visualize._parser().parse_args(
        ["--source=synthetic", "--mask_source=gt", f"--image_size={size}"]))
    ds = data_lib.source_dataset(config.data, config.masks, stats=data_lib.PipelineStats())
    example = next(iter(ds))
    crop = data_lib.two_views(example["image"], example["mask"], image_size=size,
                              seed=tf.constant([0, 0], tf.int64))
    borders = find_boundaries(crop["mask1"].numpy()[..., 0], mode="inner")
    assert (tiles[0, 3][borders] == 255).all()
    crop_pixels = np.round(crop["view1"].numpy() * 255)
    assert np.abs(tiles[0, 2] - crop_pixels).mean() > 2  # view 1 is blurred and jittered
    for c in (2, 5):  # both views are drawn, and they differ
        assert tiles[:, c].std() > 10
    assert not np.array_equal(tiles[:, 2], tiles[:, 5])


def test_build_config_takes_a_training_config_and_flags_on_top():
    args = visualize._parser().parse_args(
        ["--config=experiments/detcon_b_camvid.py:grid", "--source=synthetic",
         "--image_size=96"])
    config = visualize.build_config(args)
    assert config.masks.source == "grid"  # from the config's argument
    assert config.model.depth == 18 and config.data.fh_scale == 1000  # the config's values
    assert (config.data.source, config.data.image_size) == ("synthetic", 96)  # the flags'


@pytest.mark.parametrize("argv, expected", [
    (["--data_dir=/nonexistent"], "--data_dir=/nonexistent: directory not found"),
    (["--config=experiments/detcon_b_camvid.py:nope"], "detcon_b_camvid.py:nope"),
])
def test_bad_paths_and_configs_are_one_line_and_exit_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_a_data_root_with_split_folders_names_the_split_to_use(tmp_path, capsys):
    for split in ("train", "val"):  # the CamVid layout: ROOT/SPLIT/images, ROOT/SPLIT/labels
        (tmp_path / split / "images").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([f"--data_dir={tmp_path}", "--mask_source=gt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --data_dir={tmp_path} has no images/ folder but its split folders "
                   f"do (train, val): use --data_dir={tmp_path / 'train'}"]


def test_overlay_colours_follow_mask_ids():
    image = np.zeros([8, 8, 3])
    mask = np.zeros([8, 8], np.uint8)
    mask[:, 4:] = 7
    out = mask_pictures.overlay(image, mask, alpha=1.0)
    colours = mask_pictures.palette()
    np.testing.assert_allclose(out[4, 1] / 255, colours[0], atol=1 / 255)
    np.testing.assert_allclose(out[4, 6] / 255, colours[7], atol=1 / 255)
    assert (out[:, 4] == 255).all()  # region border drawn in white


def test_loss_grid_marks_sampled_ids_by_whether_the_other_view_drew_them():
    tile = 64  # the "+k/n" label covers the top 13 pixel rows
    views = (np.full([1, 8, 8, 3], 0.5), np.full([1, 8, 8, 3], 0.5))
    masks = (np.zeros([1, 8, 8], int), np.zeros([1, 8, 8], int))
    # A 2x2 feature grid: view 1's cells have ids 1, 2 (top) and 3, 4 (bottom).
    cells = (np.array([[[1, 2], [3, 4]]]), np.array([[[1, 1], [5, 5]]]))
    ids = (np.array([[1, 2, 2]]), np.array([[1, 5]]))  # view 1 drew 1, 2; view 2 drew 1, 5
    rows = mask_pictures.loss_panel(views, masks, cells, ids, tile=tile)
    assert rows.shape == (1, tile, 6 * tile, 3)
    grid1 = rows[0, :, 2 * tile:3 * tile].astype(int)
    colours = np.round(255 * (0.2 * 0.5 + 0.8 * mask_pictures.palette()))
    h = tile // 2
    shared, alone, undrawn = grid1[14:h - 2, 2:h - 2], grid1[2:h - 2, h + 2:-2], \
        grid1[h + 2:-2, 2:h - 2]
    # Id 1 (drawn by both views): solid colour; id 2 (view 1 only): hatched with black;
    # id 3 (not drawn): the dimmed view.
    assert (np.abs(shared - colours[1]) <= 1).all()
    assert (alone == 0).all(-1).mean() > 0.3
    assert (np.abs(alone[(alone != 0).any(-1)] - colours[2]) <= 1).all()
    assert (np.abs(undrawn - round(255 * 0.25 * 0.5)) <= 1).all()
    # The border between different ids is white; the label counts 1 of 2 drawn ids shared.
    assert (grid1[h - 1, :] == 255).all()
    picture = mask_pictures.with_header(rows, mask_pictures.LOSS_PANEL_COLUMNS,
                                        legend=mask_pictures.LOSS_PANEL_LEGEND)
    assert picture.shape[1:] == (6 * tile, 3) and picture.shape[0] > tile


def _learned_smoke_config():
    from conftest import smoke_config

    from detcon_jax import config as config_lib

    config = smoke_config()
    config.masks.source = "learned"
    # Views at 32 px; the covering window at 96 px, block group 3: a 6 x 6 grid to cluster.
    config.masks.learned.image_size = 96
    config.masks.learned.layer = 3
    config.masks.learned.num_clusters = 4
    config.masks.learned.iterations = 3
    config.masks.learned.bootstrap_source = "grid"
    config_lib.validate(config)
    return config


@pytest.mark.slow  # ~15 s on 2 cores (a state saved and restored, clustered twice)
def test_learned_masks_drawn_from_a_checkpoint_are_the_steps_clusters(tmp_path):
    import functools

    import jax

    from detcon_jax import checkpoint as ckpt_lib
    from detcon_jax import config as config_lib
    from detcon_jax import discovery, learned_masks
    from detcon_jax import step as step_lib

    config = _learned_smoke_config()
    fresh = discovery.initial_state(config)
    # A checkpoint that is not the config's initial state: step 7 (still in the bootstrap
    # phase, whose masks the picture does not show) and another target network.
    saved = fresh.replace(step=7, target_params=fresh.online_params,
                          target_batch_stats=fresh.online_batch_stats)
    checkpointer = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", keep=1,
                                         signature=config_lib.model_signature(config))
    checkpointer.save(7, saved, data_position=0)
    checkpointer.close()
    size, tile, n = 32, 96, 2
    path = visualize.visualize(tmp_path / "grid.png", config, num_images=n, tile=tile,
                               checkpoint=str(tmp_path / "run"))
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[1] == len(visualize.LEARNED_COLUMNS) * tile
    tiles = _tiles(grid, tile, n)

    # The step's own clustering of the same covering windows with the checkpoint's target
    # network and the key of its step.
    ds = data_lib.source_dataset(config.data, config.masks, stats=data_lib.PipelineStats())
    crops = [data_lib.two_views(ex["image"], ex["mask"], image_size=size, cover_size=96,
                                seed=tf.constant([0, r], tf.int64))
             for r, ex in enumerate(ds.take(n))]
    covers = np.stack([c["cover"].numpy() for c in crops])
    cluster = jax.jit(functools.partial(learned_masks.cluster_cover, config,
                                        step_lib.make_network(config)))

    def clusters(params, stats, step):
        key = jax.random.fold_in(jax.random.fold_in(saved.rng, step), learned_masks.KMEANS_SALT)
        return np.asarray(cluster({"params": params, "batch_stats": stats}, key, covers))

    ids = clusters(saved.target_params, saved.target_batch_stats, 7)
    # The checkpoint's state, not a new run's.
    assert not np.array_equal(ids, clusters(fresh.target_params, fresh.target_batch_stats, 0))
    drawn_borders = 0
    for r in range(n):
        expected = mask_pictures.fit(mask_pictures.overlay(
            covers[r], discovery.upsample_ids(ids[r], 96, 96)), tile)
        np.testing.assert_array_equal(tiles[r, 1], expected)
        # Each view's mask is the cluster map carried into it (not the bootstrap grid).
        for v, column in ((1, 3), (2, 6)):
            carried = np.asarray(learned_masks.carry_into_view(
                ids[r:r + 1], crops[r][f"cover_box{v}"].numpy()[None],
                crops[r][f"cover_flip{v}"].numpy()[None], size))[0, ..., 0]
            borders = find_boundaries(np.kron(carried, np.ones((3, 3), int)), mode="inner")
            assert (tiles[r, column][borders] == 255).all()
            drawn_borders += borders.sum()
    assert drawn_borders > 0


def test_checkpoint_of_a_non_learned_config_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["--source=synthetic", "--mask_source=fh", "--checkpoint=/tmp/x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only masks.source='learned' reads a checkpoint" in err[0], err
