"""Photometric augmentations of the two views on device (dm-pix), vectorised over the batch.

Semantics and random-key structure follow the official DetCon ``utils/augmentations.py``
(BYOL's recipe): per view, an optional left-right flip, colour jitter (brightness, contrast,
saturation, hue in random order) with probability ``color_jitter_prob``, grayscale with
probability ``to_grayscale_prob``, Gaussian blur and solarisation, then a clip to [0, 1].
Each image gets its own key (``jax.random.split(op_key, batch)``), and every per-image op is
``vmap``-ed, so there is no Python loop over the batch.

With the same key ``augment_views`` draws the same random numbers as the official
``postprocess``: the same key tree (``split(key, 2)`` per view, ``split(view_key, 4)`` for
flip/colour/blur/solarise, one key per image, ``split(transform_key, 1)[0]`` for the blur's
sigma), the same uniforms and decisions, hence the same images (checked against the
official outputs in ``tests/test_golden_aux.py``). The bits JAX derives from a key depend on
``jax_threefry_partitionable`` (default True since JAX 0.5; the official code was written when
only the False behaviour existed): the match holds under either setting when both sides use
the same one (``JAX_THREEFRY_PARTITIONABLE=false`` reproduces the 2021 draws). The train step
derives its per-step keys differently from the official ``loss_fn`` (see the README's
deviations), so only this function's draws, not a whole run's, correspond key for key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

__all__ = ["VIEW1_CONFIG", "VIEW2_CONFIG", "augment_view", "augment_views", "resolve_config"]

_COLOR_DEFAULTS = {
    "apply_prob": 1.0,
    # Jitter ranges: brightness delta ~ U[-b, b), contrast factor ~ U[1 - c, 1 + c),
    # saturation factor ~ U[1 - s, 1 + s), hue delta ~ U[-h, h).
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "color_jitter_prob": 0.8,
    "to_grayscale_prob": 0.2,
    # Apply the four jitter ops in a random order per image.
    "shuffle": True,
}

# Official per-view settings (BYOL's asymmetric recipe).
VIEW1_CONFIG: dict[str, Any] = {
    "random_flip": False,
    "color_transform": dict(_COLOR_DEFAULTS),
    # Kernel size = image height / blur_divider (rounded down to an odd size by dm-pix).
    "gaussian_blur": {"apply_prob": 1.0, "blur_divider": 10.0, "sigma_min": 0.1, "sigma_max": 2.0},
    "solarize": {"apply_prob": 0.0, "threshold": 0.5},
}
VIEW2_CONFIG: dict[str, Any] = {
    "random_flip": False,
    "color_transform": dict(_COLOR_DEFAULTS),
    "gaussian_blur": {"apply_prob": 0.1, "blur_divider": 10.0, "sigma_min": 0.1, "sigma_max": 2.0},
    "solarize": {"apply_prob": 0.2, "threshold": 0.5},
}

_PROB_KEYS = ("apply_prob", "color_jitter_prob", "to_grayscale_prob")


def _as_dict(config: Any, where: str) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"augment config {where}: expected a mapping, got {type(config).__name__}")
    return dict(config)


def resolve_config(config: Any | None, default: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``default`` with the entries of ``config`` (possibly partial, possibly nested) on top.

    Unknown keys and out-of-range values raise ``ValueError`` naming ``where.section.key``.
    """
    merged = copy.deepcopy(dict(default))
    if config is not None:
        for key, value in _as_dict(config, where).items():
            if key not in merged:
                raise ValueError(f"augment config: unknown key '{where}.{key}'")
            if isinstance(merged[key], dict):
                for sub_key, sub_value in _as_dict(value, f"{where}.{key}").items():
                    if sub_key not in merged[key]:
                        raise ValueError(f"augment config: unknown key '{where}.{key}.{sub_key}'")
                    merged[key][sub_key] = sub_value
            else:
                merged[key] = value
    _validate(merged, where)
    return merged


def _validate(config: dict[str, Any], where: str) -> None:
    def check(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            raise ValueError(f"augment config '{where}.{key}' = {value!r}: must be {rule}")

    for section in ("color_transform", "gaussian_blur", "solarize"):
        for key in _PROB_KEYS:
            if key in config[section]:
                value = config[section][key]
                check(0.0 <= value <= 1.0, f"{section}.{key}", value, "in [0, 1]")
    color = config["color_transform"]
    for key, high in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.5)):
        check(0.0 <= color[key] <= high, f"color_transform.{key}", color[key], f"in [0, {high}]")
    blur = config["gaussian_blur"]
    check(blur["blur_divider"] > 0, "gaussian_blur.blur_divider", blur["blur_divider"], "> 0")
    check(0.0 < blur["sigma_min"] <= blur["sigma_max"], "gaussian_blur.sigma_min",
          blur["sigma_min"], "in (0, sigma_max]")


def _maybe(rng: jax.Array, apply_prob: float, fn: Callable[[jax.Array], jax.Array],
           image: jax.Array) -> jax.Array:
    """``fn(image)`` with probability ``apply_prob`` (official test: ``u <= p``)."""
    return jax.lax.cond(jax.random.uniform(rng, ()) <= apply_prob, fn, lambda x: x, image)


def _clip(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0)


def _color_transform_one(image: jax.Array, rng: jax.Array, *, apply_prob: float,
                         brightness: float, contrast: float, saturation: float, hue: float,
                         color_jitter_prob: float, to_grayscale_prob: float,
                         shuffle: bool) -> jax.Array:
    """Colour jitter (random order, each op clipped) then grayscale, for one HWC image."""
    apply_rng, transform_rng = jax.random.split(rng)
    perm_rng, b_rng, c_rng, s_rng, h_rng, cj_rng, gs_rng = jax.random.split(transform_rng, 7)
    should_apply = jax.random.uniform(apply_rng, ()) <= apply_prob
    apply_grayscale = should_apply & (jax.random.uniform(gs_rng, ()) <= to_grayscale_prob)
    apply_jitter = should_apply & (jax.random.uniform(cj_rng, ()) <= color_jitter_prob)

    # A disabled op (strength 0) is skipped entirely, without the clip, as in the official code.
    identity = lambda x: x
    branches = [
        (lambda x: _clip(pix.random_brightness(b_rng, x, brightness))) if brightness > 0
        else identity,
        (lambda x: _clip(pix.random_contrast(c_rng, x, 1 - contrast, 1 + contrast)))
        if contrast > 0 else identity,
        (lambda x: _clip(pix.random_saturation(s_rng, x, 1 - saturation, 1 + saturation)))
        if saturation > 0 else identity,
        (lambda x: _clip(pix.random_hue(h_rng, x, hue))) if hue > 0 else identity,
    ]
    if shuffle:
        order = jax.random.permutation(perm_rng, jnp.arange(4, dtype=jnp.int32))
    else:
        order = jnp.arange(4, dtype=jnp.int32)
    out = image
    # Four positions, each running the op whose index sits there; under vmap the switch
    # lowers to a select, so every image may have its own order.
    for position in range(4):
        out = jax.lax.cond(
            apply_jitter,
            lambda x, p=position: jax.lax.switch(order[p], branches, x),
            identity,
            out,
        )
    out = jax.lax.cond(
        apply_grayscale, lambda x: pix.rgb_to_grayscale(x, keep_dims=True), identity, out)
    return _clip(out)


def _blur_one(image: jax.Array, rng: jax.Array, *, kernel_size: float, sigma_min: float,
              sigma_max: float, apply_prob: float) -> jax.Array:
    apply_rng, transform_rng = jax.random.split(rng)
    # The official code draws sigma from split(transform_rng, 1)[0], not transform_rng itself.
    (sigma_rng,) = jax.random.split(transform_rng, 1)
    sigma = jax.random.uniform(
        sigma_rng, (), minval=sigma_min, maxval=sigma_max, dtype=jnp.float32)
    # Zero ("SAME") padding as in the official code, which darkens the borders slightly.
    blur = lambda x: pix.gaussian_blur(x, sigma, kernel_size, padding="SAME")
    return _maybe(apply_rng, apply_prob, blur, image)


def _check_images(images: jax.Array, name: str) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"augment: {name} must be [B, H, W, 3], got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"augment: {name} must be floating point in [0, 1], got {images.dtype}")


def augment_view(rng: jax.Array, images: jax.Array, config: Mapping[str, Any]) -> jax.Array:
    """Augments a batch ``[B, H, W, 3]`` in [0, 1] with one view's (full, resolved) config.

    Ops whose probability is 0 are not traced at all. The result is clipped to [0, 1] and
    gradient-stopped.
    """
    _check_images(images, "images")
    batch = images.shape[0]
    flip_rng, color_rng, blur_rng, solarize_rng = jax.random.split(rng, 4)
    out = images
    if config["random_flip"]:
        out = jax.vmap(pix.random_flip_left_right)(jax.random.split(flip_rng, batch), out)
    color = config["color_transform"]
    if color["apply_prob"] > 0:
        fn = lambda x, k: _color_transform_one(x, k, **color)
        out = jax.vmap(fn)(out, jax.random.split(color_rng, batch))
    blur = config["gaussian_blur"]
    if blur["apply_prob"] > 0:
        # Official rule: kernel_size = H / blur_divider; dm-pix uses radius int(kernel_size / 2),
        # i.e. 23 taps at 224 px and 3 taps at 32 px.
        fn = lambda x, k: _blur_one(
            x, k, kernel_size=images.shape[1] / blur["blur_divider"],
            sigma_min=blur["sigma_min"], sigma_max=blur["sigma_max"],
            apply_prob=blur["apply_prob"])
        out = jax.vmap(fn)(out, jax.random.split(blur_rng, batch))
    solarize = config["solarize"]
    if solarize["apply_prob"] > 0:
        fn = lambda x, k: _maybe(
            k, solarize["apply_prob"], lambda y: pix.solarize(y, solarize["threshold"]), x)
        out = jax.vmap(fn)(out, jax.random.split(solarize_rng, batch))
    return jax.lax.stop_gradient(_clip(out))


def augment_views(
    rng: jax.Array,
    view1: jax.Array,
    view2: jax.Array,
    *,
    view1_config: Mapping[str, Any] | None = None,
    view2_config: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Augments both views, each with its own key (``split(rng, 2)``) and config.

    Args:
      rng: one PRNG key for the whole batch.
      view1, view2: ``[B, H, W, 3]`` floating images in [0, 1].
      view1_config, view2_config: overrides (possibly partial, nested like `VIEW1_CONFIG`)
        applied on top of `VIEW1_CONFIG` / `VIEW2_CONFIG`; a ``ConfigDict`` works too. They
        are static Python values (they decide what is traced).

    Returns:
      ``(view1, view2)`` augmented, same shapes and dtypes, clipped to [0, 1].
    """
    config1 = resolve_config(view1_config, VIEW1_CONFIG, "view1")
    config2 = resolve_config(view2_config, VIEW2_CONFIG, "view2")
    _check_images(view1, "view1")
    _check_images(view2, "view2")
    rng1, rng2 = jax.random.split(rng, 2)
    return augment_view(rng1, view1, config1), augment_view(rng2, view2, config2)
