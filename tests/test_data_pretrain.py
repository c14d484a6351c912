"""Tests of the pre-training builder: determinism, resume skip, configuration errors."""

import numpy as np
import pytest
from data_helpers import SIZE, configs, take_batches
from scipy import ndimage

from detcon_jax.data import PipelineStats, pretrain


def _pretrain(data_masks, **kwargs):
    return pretrain.make_pretrain_dataset(*data_masks, stats=PipelineStats(), **kwargs)


def test_synthetic_source_gt_masks_align_and_deterministic_mode():
    config = configs("synthetic", "gt", image_size=SIZE, deterministic=True,
                     synthetic_num_images=8)
    kwargs = dict(batch_size=4, seed=11)
    a = take_batches(_pretrain(config, **kwargs), 2)
    b = take_batches(_pretrain(config, **kwargs), 2)
    c = take_batches(_pretrain(config, **{**kwargs, "seed": 12}), 2)
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


def test_skip_batches_resumes_the_same_stream_and_unseeded_runs_differ():
    config = configs("synthetic", "gt", image_size=32, deterministic=True,
                     synthetic_num_images=6)
    kwargs = dict(batch_size=2, seed=5)
    full = take_batches(_pretrain(config, **kwargs), 5)
    resumed = take_batches(_pretrain(config, skip_batches=3, **kwargs), 2)
    for x, y in zip(full[3:], resumed, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # Without a seed each run draws its own augmentation stream.
    unseeded = {**kwargs, "seed": None}
    a = take_batches(_pretrain(config, **unseeded), 1)[0]
    b = take_batches(_pretrain(config, **unseeded), 1)[0]
    assert not np.array_equal(a["view1"], b["view1"])


def test_num_examples_and_bad_config():
    assert pretrain.num_examples(configs("synthetic", synthetic_num_images=10)[0]) == 10
    with pytest.raises(ValueError, match="source must be one of"):
        _pretrain(configs("nope"), batch_size=2)
    with pytest.raises(ValueError, match="mask_source"):
        _pretrain(configs("synthetic", "boxes"), batch_size=2)
