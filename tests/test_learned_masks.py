"""Learned masks: the carry-over of a covering window's ids into the views, the discovery
features, the bootstrap switch-over and the train step with ``masks.source='learned'``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import smoke_config
from data_helpers import SIZE, check_view, decode_ids
from test_data_geometry import _flipped, _region_image

from detcon_jax import config as config_lib
from detcon_jax import learned_masks
from detcon_jax import model as model_lib
from detcon_jax import step as step_lib
from detcon_jax.data import geometry


def test_cover_ids_carried_into_each_view_match_its_pixels():
    """The alignment property of the pipeline, on this path: the covering window's ids
    (decoded from its colour-coded pixels) carried into a view by its box and flip equal
    the ids painted in the view's own pixels, away from region borders."""
    image_bytes, _ = _region_image()
    flips = []
    for seed in range(12):
        out = geometry.two_views(image_bytes, None, image_size=SIZE, seed=[seed, 1],
                                 cover_size=SIZE)
        out = {k: v.numpy() for k, v in out.items()}
        assert out["cover"].shape == (SIZE, SIZE, 3)
        cover_ids = decode_ids(out["cover"])[None]
        for v in (1, 2):
            box = out[f"cover_box{v}"]
            assert np.all(box >= 0) and np.all(box[:2] + box[2:] <= 1 + 1e-6)
            carried = learned_masks.carry_into_view(
                jnp.asarray(cover_ids), out[f"cover_box{v}"][None],
                np.asarray([out[f"cover_flip{v}"]]), SIZE)
            carried = np.asarray(carried[0]).astype(np.uint8)
            check_view(out[f"view{v}"], carried)
            flips.append(_flipped(carried))
    seen = [f for f in flips if f is not None]
    assert 0 < np.mean(seen) < 1  # both flipped and unflipped views were checked


def test_cover_is_the_bounding_box_and_other_sources_are_unchanged():
    image_bytes, ids = _region_image()
    plain = geometry.two_views(image_bytes, ids, image_size=SIZE, seed=[4, 2])
    learned = geometry.two_views(image_bytes, ids, image_size=SIZE, seed=[4, 2],
                                 cover_size=32)
    assert sorted(plain) == ["mask1", "mask2", "view1", "view2"]
    for k in plain:
        np.testing.assert_array_equal(plain[k].numpy(), learned[k].numpy())
    boxes = np.stack([learned["cover_box1"].numpy(), learned["cover_box2"].numpy()])
    # Bounding box: each side of the cover is touched by one of the views.
    np.testing.assert_allclose(boxes[:, :2].min(0), 0, atol=1e-6)
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]).max(0), 1, atol=1e-6)


def test_carry_into_view_nearest_with_flip():
    ids = jnp.arange(4 * 4).reshape(1, 4, 4)
    full = learned_masks.carry_into_view(ids, jnp.array([[0.0, 0.0, 1.0, 1.0]]),
                                         jnp.array([0]), 8)[0, ..., 0]
    np.testing.assert_array_equal(full, np.repeat(np.repeat(ids[0], 2, 0), 2, 1))
    # The right half of the cover, flipped: columns 3, 2.
    half = learned_masks.carry_into_view(ids, jnp.array([[0.0, 0.5, 1.0, 0.5]]),
                                         jnp.array([1]), 4)[0, ..., 0]
    np.testing.assert_array_equal(half[0], [3, 3, 2, 2])
    np.testing.assert_array_equal(half[:, 0], [3, 7, 11, 15])


def _learned_config(**learned):
    config = smoke_config()
    config.data.image_size = 32
    config.masks.source = "learned"
    config.masks.learned.image_size = 64 if learned.get("layer", 4) < 4 else 96
    config.masks.learned.num_clusters = 4
    config.masks.learned.iterations = 3
    config.masks.learned.bootstrap_source = "grid"
    for k, v in learned.items():
        config.masks.learned[k] = v
    config_lib.validate(config)
    return config


def _batch(config, batch=4, seed=0):
    rs = np.random.RandomState(seed)
    s, c = config.data.image_size, config.masks.learned.image_size
    boxes = rs.uniform(0, 0.5, size=(2, batch, 2))
    return {
        "view1": rs.rand(batch, s, s, 3).astype(np.float32),
        "view2": rs.rand(batch, s, s, 3).astype(np.float32),
        "mask1": np.full((batch, s, s, 1), 200, np.uint8),
        "mask2": np.full((batch, s, s, 1), 201, np.uint8),
        "label": np.zeros((batch,), np.int32),
        "cover": rs.rand(batch, c, c, 3).astype(np.float32),
        "cover_box1": np.concatenate([boxes[0], 0.5 + 0 * boxes[0]], -1).astype(np.float32),
        "cover_box2": np.concatenate([boxes[1], 0.5 + 0 * boxes[1]], -1).astype(np.float32),
        "cover_flip1": np.array([0, 1] * (batch // 2), np.int32),
        "cover_flip2": np.array([1, 0] * (batch // 2), np.int32),
    }


@pytest.mark.slow
@pytest.mark.parametrize("layer", [3, 4])
def test_discovery_features_of_the_chosen_block_group(layer):
    config = _learned_config(layer=layer)
    network = step_lib.make_network(config)
    size = config.masks.learned.image_size
    variables = network.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), None,
                             train=True)
    images = jnp.asarray(np.random.RandomState(0).rand(2, size, size, 3), jnp.float32)
    features = learned_masks.discovery_features(network, variables, images, layer=layer)
    stride = {3: 16, 4: 32}[layer]
    assert features.shape == (2, size // stride, size // stride, 16)
    if layer == 4:  # the encoder's output, in inference mode
        mean, std = jnp.asarray(model_lib.IMAGENET_MEAN), jnp.asarray(model_lib.IMAGENET_STD)
        want = network.apply(variables, images,
                             method=lambda m, x: m.encoder((x - mean) / std, False))
        np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bootstrap_switch_over_at_its_step_without_recompiling():
    config = _learned_config(bootstrap_steps=5)
    network = step_lib.make_network(config)
    c = config.masks.learned.image_size
    variables = network.init(jax.random.PRNGKey(0), jnp.zeros((1, c, c, 3)), None, train=True)
    batch = {k: jnp.asarray(v) for k, v in _batch(config).items()}
    rng = jax.random.PRNGKey(1)
    segment = jax.jit(lambda step: learned_masks.view_segmentations(
        config, network, variables, rng, step, batch))
    before = [np.asarray(x) for x in segment(jnp.int32(4))]
    after = [np.asarray(x) for x in segment(jnp.int32(5))]
    np.testing.assert_array_equal(before[0], batch["mask1"].astype(np.int32))
    np.testing.assert_array_equal(before[1], batch["mask2"].astype(np.int32))
    ids = learned_masks.cluster_cover(config, network, variables,
                                      jax.random.fold_in(rng, learned_masks.KMEANS_SALT),
                                      batch["cover"])
    for v in (1, 2):
        want = learned_masks.carry_into_view(ids, batch[f"cover_box{v}"],
                                             batch[f"cover_flip{v}"], 32)
        np.testing.assert_array_equal(after[v - 1], np.asarray(want))
        assert after[v - 1].max() < config.masks.learned.num_clusters
    assert segment._cache_size() == 1


@pytest.mark.slow
@pytest.mark.parametrize("method,network", [("detcon_b", "target"), ("detcon_s", "ema")])
def test_train_step_with_learned_masks(method, network):
    config = _learned_config(bootstrap_steps=1, network=network)
    config.method = method
    config_lib.validate(config)
    schedules = step_lib.make_schedules(config, total_steps=10, warmup_steps=1)
    optimizer = step_lib.make_optimizer(config, schedules)
    state = step_lib.create_train_state(config, jax.random.PRNGKey(0), optimizer=optimizer)
    assert (state.discovery_params is not None) == (network == "ema")
    train_step = jax.jit(step_lib.make_train_step(config, schedules, optimizer))
    losses = []
    for i in range(2):
        state, metrics = train_step(state, _batch(config, seed=i))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    if network == "ema":
        rate = config.masks.learned.ema_rate
        leaf = lambda t: np.asarray(jax.tree.leaves(t)[0])  # noqa: E731
        # After two steps the EMA lies strictly between its start and the online network.
        assert not np.allclose(leaf(state.discovery_params), leaf(state.online_params))
        assert 0 < rate < 1
        # The EMA keeps every leaf's dtype (a float counter would be cast back on restore).
        dtypes = lambda t: [x.dtype for x in jax.tree.leaves(t)]  # noqa: E731
        assert dtypes(state.discovery_batch_stats) == dtypes(state.online_batch_stats)


def test_learned_config_errors_name_the_key():
    config = _learned_config()
    config.method = "detcon_s"
    with pytest.raises(config_lib.ConfigError, match="masks.learned.network"):
        config_lib.validate(config)
    config = _learned_config()
    config.masks.learned.num_clusters = 300
    with pytest.raises(config_lib.ConfigError, match="masks.learned.num_clusters"):
        config_lib.validate(config)
    config = _learned_config()
    config.masks.learned.bootstrap_source = "gt"
    with pytest.raises(config_lib.ConfigError, match="masks.learned.bootstrap_source"):
        config_lib.validate(config)
