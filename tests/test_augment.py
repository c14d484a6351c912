"""Tests for detcon_jax.augment (on-device photometric augmentations)."""

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import f32_tolerance

from detcon_jax import augment

SIZE = 32
BATCH = 16

_OFF = {
    "random_flip": False,
    "color_transform": {"apply_prob": 0.0},
    "gaussian_blur": {"apply_prob": 0.0},
    "solarize": {"apply_prob": 0.0},
}


def _images(seed=0, batch=BATCH):
    return jax.random.uniform(jax.random.PRNGKey(seed), (batch, SIZE, SIZE, 3))


def _view(images, config, seed=0):
    """One view through `augment_views` (as view 1) with `config` as overrides."""
    fn = jax.jit(lambda r, x: augment.augment_views(r, x, x, view1_config=config)[0])
    return fn(jax.random.PRNGKey(seed), images)


@pytest.fixture(scope="module")
def default_views():
    fn = jax.jit(augment.augment_views)
    x1, x2 = _images(1), _images(2)
    out_a = fn(jax.random.PRNGKey(7), x1, x2)
    out_b = fn(jax.random.PRNGKey(7), x1, x2)
    out_c = fn(jax.random.PRNGKey(8), x1, x2)
    return (x1, x2), out_a, out_b, out_c


def test_shapes_dtype_range(default_views):
    (x1, x2), (v1, v2), _, _ = default_views
    for x, v in ((x1, v1), (x2, v2)):
        assert v.shape == x.shape and v.dtype == x.dtype
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
        assert not np.allclose(v, x)  # something happened


def test_deterministic_for_fixed_rng(default_views):
    _, (a1, a2), (b1, b2), (c1, c2) = default_views
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.allclose(a1, c1) and not np.allclose(a2, c2)


def test_each_image_gets_its_own_randomness():
    image = _images(3, batch=1)
    same = jnp.repeat(image, BATCH, axis=0)
    out1, out2 = jax.jit(augment.augment_views)(jax.random.PRNGKey(0), same, same)
    for out in (out1, out2):
        flat = np.asarray(out).reshape(BATCH, -1)
        distinct = {flat[i].tobytes() for i in range(BATCH)}
        assert len(distinct) >= BATCH - 2, f"only {len(distinct)} distinct outputs"
    # The two views of the same input are augmented differently too.
    assert not np.allclose(out1, out2)


def test_all_probabilities_zero_is_identity():
    x = _images(4)
    np.testing.assert_array_equal(_view(x, _OFF), x)
    # Values outside [0, 1] are only clipped.
    np.testing.assert_array_equal(_view(2.0 * x - 0.5, _OFF), jnp.clip(2.0 * x - 0.5, 0, 1))


def test_brightness_only_shifts_mean_within_range():
    x = 0.45 + 0.1 * _images(5, batch=64)  # values in [0.45, 0.55]: no clipping for |d| <= 0.4
    config = {
        "color_transform": {"apply_prob": 1.0, "color_jitter_prob": 1.0,
                            "to_grayscale_prob": 0.0, "brightness": 0.4, "contrast": 0.0,
                            "saturation": 0.0, "hue": 0.0},
        "gaussian_blur": {"apply_prob": 0.0},
    }
    out = _view(x, config)
    shift = np.asarray(out - x).reshape(64, -1)
    delta = shift.mean(axis=1)
    # A brightness change is one additive constant per image: (x + d) - x rounds twice on
    # values in [0, 1] (f32_tolerance(1, depth=2)).
    np.testing.assert_allclose(shift, delta[:, None] * np.ones_like(shift),
                               atol=f32_tolerance(1, depth=2))
    assert np.all(np.abs(delta) <= 0.4 + 1e-6)
    assert delta.min() < -0.1 and delta.max() > 0.1  # both directions are drawn
    assert len(np.unique(np.round(delta, 5))) == 64


def test_grayscale_probability_one_gives_equal_channels():
    x = _images(6)
    config = {
        "color_transform": {"apply_prob": 1.0, "color_jitter_prob": 0.0,
                            "to_grayscale_prob": 1.0},
        "gaussian_blur": {"apply_prob": 0.0},
    }
    out = np.asarray(_view(x, config))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # Rec. 601 luma (TensorFlow's weights), as the official code via dm-pix.
    luma = np.asarray(x) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    # A 3-term weighted sum of values in [0, 1].
    np.testing.assert_allclose(out[..., 0], luma, atol=f32_tolerance(3))


def test_solarize_probability_one_hand_case():
    values = np.array([0.0, 0.2, 0.49, 0.5, 0.7, 1.0], np.float32)
    x = jnp.asarray(np.broadcast_to(values[None, None, :, None], (BATCH, SIZE, 6, 3)).copy())
    x = jnp.pad(x, ((0, 0), (0, 0), (0, SIZE - 6), (0, 0)))  # the rest is 0 -> stays 0
    config = {"color_transform": {"apply_prob": 0.0}, "gaussian_blur": {"apply_prob": 0.0},
              "solarize": {"apply_prob": 1.0, "threshold": 0.5}}
    out = np.asarray(_view(x, config))
    want = np.array([0.0, 0.2, 0.49, 0.5, 0.3, 0.0], np.float32)
    # 1 - x, one rounding of a value in [0, 1].
    np.testing.assert_allclose(out[:, :, :6, :], np.broadcast_to(
        want[None, None, :, None], (BATCH, SIZE, 6, 3)), atol=f32_tolerance(1))
    np.testing.assert_array_equal(out[:, :, 6:, :], 0.0)


def _high_frequency_energy(images):
    """Energy of horizontal + vertical first differences, per image."""
    x = np.asarray(images)
    dx = np.diff(x, axis=2)[:, 2:-2, 2:-2]
    dy = np.diff(x, axis=1)[:, 2:-2, 2:-2]
    return (dx ** 2).sum(axis=(1, 2, 3)) + (dy ** 2).sum(axis=(1, 2, 3))


def test_blur_probability_one_reduces_high_frequencies():
    rows, cols = np.indices((SIZE, SIZE))
    board = ((rows + cols) % 2).astype(np.float32)
    x = jnp.asarray(np.broadcast_to(board[None, :, :, None], (BATCH, SIZE, SIZE, 3)).copy())
    config = {"color_transform": {"apply_prob": 0.0}, "gaussian_blur": {"apply_prob": 1.0}}
    out = _view(x, config)
    before, after = _high_frequency_energy(x), _high_frequency_energy(out)
    # sigma ~ U[0.1, 2): never sharper; a sigma near 0.1 is almost the identity, larger ones
    # remove most of a checkerboard's energy.
    assert np.all(after <= before * (1 + 1e-6))
    assert np.median(after / before) < 0.2
    # Fixed sigma = 1 on a 32 px image: 3 taps (kernel_size 3.2 -> radius 1); away from the
    # zero-padded border a checkerboard keeps amplitude (w0 - 2 w1)^2 around 0.5.
    fixed = {"color_transform": {"apply_prob": 0.0},
             "gaussian_blur": {"apply_prob": 1.0, "sigma_min": 1.0, "sigma_max": 1.0}}
    out = np.asarray(_view(x, fixed))
    w = np.exp(-np.array([1.0, 0.0, 1.0]) / 2.0)
    w /= w.sum()
    amp = (w[1] - 2 * w[0]) ** 2
    want = 0.5 + 0.5 * amp * (2 * board - 1)
    # Two separable 3-tap passes over values in [0, 1].
    np.testing.assert_allclose(out[:, 1:-1, 1:-1, :], np.broadcast_to(
        want[None, 1:-1, 1:-1, None], out[:, 1:-1, 1:-1, :].shape),
        atol=f32_tolerance(3, depth=2))


def test_view2_solarize_fires_about_twenty_percent():
    n = 2048
    x = jnp.full((n, SIZE, SIZE, 3), 0.8, jnp.float32)
    # View-2 defaults with colour and blur switched off, so only solarisation (p = 0.2) acts.
    only_solarize = {"color_transform": {"apply_prob": 0.0}, "gaussian_blur": {"apply_prob": 0.0}}
    _, out = jax.jit(lambda r, v: augment.augment_views(r, v, v, view2_config=only_solarize))(
        jax.random.PRNGKey(11), x)
    fired = np.asarray(out[:, 0, 0, 0]) < 0.5
    values = np.asarray(out)
    # Each image is either untouched (0.8) or solarised (1 - 0.8) everywhere.
    np.testing.assert_allclose(values, np.where(fired, 0.2, 0.8)[:, None, None, None]
                               * np.ones_like(values), atol=f32_tolerance(1))
    # Binomial(2048, 0.2) has sd 0.0088; allow 5 sd.
    assert abs(fired.mean() - 0.2) < 0.045, fired.mean()


@pytest.mark.slow
def test_random_order_matches_per_image_reference():
    """Jitter order per image equals a direct per-image loop over its own permutation.

    The reference re-derives each image's keys with the documented split structure
    (view key -> 4 op keys -> one key per image -> apply/transform -> 7 keys).
    """
    x = _images(9)
    config = {
        "color_transform": {"apply_prob": 1.0, "color_jitter_prob": 1.0,
                            "to_grayscale_prob": 0.0, "shuffle": True},
        "gaussian_blur": {"apply_prob": 0.0},
    }
    rng = jax.random.PRNGKey(0)
    out = np.asarray(_view(x, config, seed=0))
    view_rng, _ = jax.random.split(rng, 2)
    _, color_rng, _, _ = jax.random.split(view_rng, 4)
    clip = lambda y: jnp.clip(y, 0.0, 1.0)
    orders = set()
    for i, image_rng in enumerate(jax.random.split(color_rng, BATCH)):
        _, transform_rng = jax.random.split(image_rng)
        perm_rng, b, c, s, h, _, _ = jax.random.split(transform_rng, 7)
        ops = [
            lambda y, k=b: clip(pix.random_brightness(k, y, 0.4)),
            lambda y, k=c: clip(pix.random_contrast(k, y, 0.6, 1.4)),
            lambda y, k=s: clip(pix.random_saturation(k, y, 0.8, 1.2)),
            lambda y, k=h: clip(pix.random_hue(k, y, 0.1)),
        ]
        order = [int(o) for o in jax.random.permutation(perm_rng, jnp.arange(4))]
        orders.add(tuple(order))
        y = x[i]
        for op in order:
            y = ops[op](y)
        # The same four ops, jitted over the batch vs one image at a time: contrast's mean
        # is a sum over the image's SIZE x SIZE pixels, the others a few roundings each.
        np.testing.assert_allclose(out[i], y, atol=f32_tolerance(SIZE * SIZE, depth=4),
                                   err_msg=f"image {i}, order {order}")
    assert len(orders) > 4  # the batch really mixes orders


def test_config_errors():
    x = _images(0, batch=2)
    rng = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"view1\.color_transform\.brightnes'"):
        augment.augment_views(rng, x, x, view1_config={"color_transform": {"brightnes": 0.1}})
    with pytest.raises(ValueError, match=r"view2\.solarize\.apply_prob"):
        augment.augment_views(rng, x, x, view2_config={"solarize": {"apply_prob": 1.5}})
    with pytest.raises(ValueError, match=r"view2\.blur'"):
        augment.augment_views(rng, x, x, view2_config={"blur": {}})
    with pytest.raises(ValueError, match="view1 must be"):
        augment.augment_views(rng, x[..., :1], x)
    with pytest.raises(ValueError, match="floating"):
        augment.augment_views(rng, x, (x * 255).astype(jnp.uint8))


def test_default_configs_are_the_official_values():
    for config, blur_p, solarize_p in ((augment.VIEW1_CONFIG, 1.0, 0.0),
                                       (augment.VIEW2_CONFIG, 0.1, 0.2)):
        assert config["random_flip"] is False
        assert config["color_transform"] == {
            "apply_prob": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
            "hue": 0.1, "color_jitter_prob": 0.8, "to_grayscale_prob": 0.2, "shuffle": True}
        assert config["gaussian_blur"] == {
            "apply_prob": blur_p, "blur_divider": 10.0, "sigma_min": 0.1, "sigma_max": 2.0}
        assert config["solarize"] == {"apply_prob": solarize_p, "threshold": 0.5}
