"""Tests of the data sources: sharding across hosts, folders, scikit-image photos, TFDS."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import SIZE, configs, take_batches
from scipy import ndimage

from detcon_jax import config
from detcon_jax.data import PipelineStats, evaluation, mask_sources, pretrain, sources


def test_per_host_sharding_is_disjoint_and_complete():
    names = []
    for index in range(2):
        ds = pretrain.source_dataset(*configs("synthetic", "gt", synthetic_num_images=6),
                                     stats=PipelineStats(), process_index=index,
                                     process_count=2)
        names.append({ex["name"].numpy() for ex in ds})
    assert not names[0] & names[1] and len(names[0] | names[1]) == 6
    with pytest.raises(ValueError, match="process_index"):
        pretrain.source_dataset(*configs("synthetic"), stats=PipelineStats(), process_index=2,
                                process_count=2)


def test_folder_source_on_camvid_gt(data_dir):
    root = data_dir / "camvid" / "val"
    ds = pretrain.make_pretrain_dataset(*configs("folder", "gt", path=str(root),
                                                 image_size=SIZE),
                                        batch_size=2, seed=0, stats=PipelineStats())
    batch = take_batches(ds, 1)[0]
    assert batch["view1"].shape == (2, SIZE, SIZE, 3)
    assert batch["mask1"].max() <= 11 and len(np.unique(batch["mask1"])) > 2
    assert pretrain.num_examples(configs("folder", path=str(root))[0]) == 101


def test_skimage_source_with_fh_masks():
    ds = pretrain.make_pretrain_dataset(*configs("skimage", "fh", image_size=SIZE),
                                        batch_size=2, shuffle=False, seed=0,
                                        stats=PipelineStats())
    batch = take_batches(ds, 1)[0]
    assert batch["view1"].shape == (2, SIZE, SIZE, 3)
    assert len(np.unique(batch["mask1"][0])) > 1
    assert pretrain.num_examples(configs("skimage")[0]) >= 5


def test_tfds_source_from_local_data_dir(tmp_path):
    import tensorflow_datasets as tfds

    def tfds_config(**data):
        return configs("tfds", "gt", tfds_name="oxford_iiit_pet", path=str(tmp_path), **data)

    with pytest.raises(FileNotFoundError, match="never downloads"):
        pretrain.make_pretrain_dataset(*tfds_config(), batch_size=2, stats=PipelineStats())
    rng = np.random.default_rng(0)
    images, ids = sources.synthetic_images(4, 96, 120, seed=2)

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensor_slices({
            "image": images, "segmentation_mask": ids[..., None],
            "label": rng.integers(0, 37, 4), "file_name": [f"pet{i}.jpg" for i in range(4)]})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds = pretrain.make_pretrain_dataset(*tfds_config(image_size=SIZE, deterministic=True),
                                            batch_size=2, shuffle=False, seed=0,
                                            stats=PipelineStats())
        batch = take_batches(ds, 1)[0]
        evals = take_batches(evaluation.make_eval_dataset(
            "tfds", tfds_name="oxford_iiit_pet", data_dir=tmp_path, split="train", batch_size=3,
            image_size=32, stats=PipelineStats()), 5)
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
        ds = pretrain.make_pretrain_dataset(*tfds_config(image_size=SIZE), batch_size=1,
                                            stats=PipelineStats())
        with pytest.raises(tf.errors.InvalidArgumentError, match="oxford_iiit_pet:"):
            take_batches(ds, 1)


def test_tfds_mask_merges_instances_and_panoptic_ids():
    inst = np.zeros([3, 4, 5, 1], bool)
    inst[0, :2, :2] = True
    inst[1, 1:, 3:] = True
    inst[2, 0, 0] = True  # later instance wins the overlap
    merged = sources.tfds_mask({"objects": {"segmentation": inst}}).numpy()[..., 0]
    assert merged[0, 0] == 3 and merged[1, 1] == 1 and merged[3, 4] == 2 and merged[3, 0] == 0
    rgb = np.zeros([2, 3, 3], np.uint8)
    rgb[0, 1] = [1, 2, 0]
    rgb[1, :] = [5, 0, 1]
    panoptic = sources.tfds_mask({"panoptic_image": rgb}).numpy()[..., 0]
    np.testing.assert_array_equal(panoptic, [[0, 1, 0], [2, 2, 2]])


def test_registries_match_the_config_validation():
    # config.validate runs before TensorFlow is imported, so it keeps its own name lists.
    assert tuple(sources.SOURCES) == config.DATA_SOURCES
    # 'learned' masks are made on device; for them the pipeline serves the bootstrap source.
    assert mask_sources.MASK_SOURCES == tuple(x for x in config.MASK_SOURCES if x != "learned")
    assert "learned" in config.MASK_SOURCES
