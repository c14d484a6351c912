"""Two-view geometry: crop windows, flips and resizes applied alike to an image and its mask.

Follows the official DetCon pre-processing (``utils/tf_image_ops.py`` there): one random crop
window with area in [0.08, 1] of the image and log aspect ratio in [log 3/4, log 4/3], drawn
once and clipped to the image (no retries), a left-right flip with probability 1/2, bicubic
resize of the image clipped to [0, 1] and nearest-neighbour resize of the mask. Photometric
augmentations run on device (``detcon_jax.augment``), not here.

Everything here is per element and works eagerly and inside tf.data.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from detcon_jax.data import decode

_JPEG_ALIGN = 16
_LOG_RATIO = (float(np.log(3 / 4)), float(np.log(4 / 3)))


def _uniform(shape, minval, maxval, dtype, seed):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


def _windows_from_uniforms(shape: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``[N, 4]`` crop windows from ``[N, >=4]`` uniforms in [0, 1) (columns: area, log aspect
    ratio, horizontal offset, vertical offset), with the official recipe: area in [0.08, 1] of
    the image, log aspect ratio in [log 3/4, log 4/3], one draw clipped to the image."""
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)
    target_area = (0.08 + (1.0 - 0.08) * u[:, 0]) * area
    aspect_ratio = tf.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * u[:, 1])
    w = tf.minimum(tf.cast(tf.round(tf.sqrt(target_area * aspect_ratio)), tf.int32), width)
    h = tf.minimum(tf.cast(tf.round(tf.sqrt(target_area / aspect_ratio)), tf.int32), height)
    # Offsets uniform over the W - w + 1 (H - h + 1) positions; the minimum guards u -> 1.
    offset_w = tf.minimum(tf.cast(u[:, 2] * tf.cast(width - w + 1, tf.float32), tf.int32),
                          width - w)
    offset_h = tf.minimum(tf.cast(u[:, 3] * tf.cast(height - h + 1, tf.float32), tf.int32),
                          height - h)
    return tf.stack([offset_h, offset_w, h, w], axis=1)


def random_crop_window(shape: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random ``[offset_h, offset_w, h, w]`` as the official code: one draw, clipped, no retry.

    Args:
      shape: int32 ``[H, W]`` of the full image.
      seed: optional ``[2]`` int seed for stateless sampling; stateful ops when None.
    """
    return _windows_from_uniforms(shape, _uniform([1, 4], 0.0, 1.0, tf.float32, seed))[0]


def center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int = 32) -> tf.Tensor:
    """Official centre crop: a square of ``S / (S + crop_padding) * min(H, W)``, centred."""
    height, width = shape[0], shape[1]
    size = tf.cast(
        image_size / (image_size + crop_padding) * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32)
    return tf.stack([(height - size + 1) // 2, (width - size + 1) // 2, size, size])


def _two_windows(shape: tf.Tensor, seed: tf.Tensor | None,
                 random_flip: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """``[2, 4]`` crop windows and ``[2]`` flips of the two views, from one draw of every
    random number of both (crop: 4 per view, flip: 1 per view)."""
    u = _uniform([2, 5], 0.0, 1.0, tf.float32, seed)
    windows = _windows_from_uniforms(shape, u)
    flips = u[:, 4] < 0.5 if random_flip else tf.zeros([2], tf.bool)
    return windows, flips


def _crop(x: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return x[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


class _CropDecoder:
    """An image to crop views from, decoded once.

    JPEG bytes are decoded with ``decode_and_crop_jpeg`` restricted to the bounding box of all
    the views' windows (at most one full decode; two partial decodes of one image cost more
    than one full decode, since the entropy decoding of every row above a window's bottom edge
    is paid each time). Other formats, or already decoded images, are decoded once in full.
    """

    def __init__(self, image: tf.Tensor):
        image = tf.convert_to_tensor(image)
        if image.dtype != tf.string:
            self.bytes, self.is_jpeg = None, tf.constant(False)
            self.full = decode.decode_image(image)
            self.shape = tf.shape(self.full)[:2]
            return
        self.bytes, self.is_jpeg = image, decode.is_jpeg(image)
        self.full = tf.cond(self.is_jpeg, lambda: tf.zeros([0, 0, 3], tf.uint8),
                            lambda: decode.decode_image(image))
        self.shape = tf.cond(self.is_jpeg, lambda: tf.image.extract_jpeg_shape(image)[:2],
                             lambda: tf.shape(self.full)[:2])

    def region(self, windows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Pixels covering every ``[N, 4]`` window, and the ``[2]`` offset of their origin."""
        if self.bytes is None:
            return self.full, tf.zeros([2], tf.int32)
        # The left edge goes down to a multiple of 16 px, an iMCU boundary of every common
        # chroma subsampling: libjpeg-turbo decodes a cropped region from that boundary anyway,
        # and TensorFlow copies each row once more to shift it when the request is not
        # aligned. Same pixels, one copy of the region fewer.
        top = tf.reduce_min(windows[:, :2], axis=0) // [1, _JPEG_ALIGN] * [1, _JPEG_ALIGN]
        bottom = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
        box = tf.concat([top, bottom - top], axis=0)
        pixels, origin = tf.cond(
            self.is_jpeg,
            lambda: (tf.io.decode_and_crop_jpeg(self.bytes, box, channels=3), top),
            lambda: (self.full, tf.zeros([2], tf.int32)))
        pixels.set_shape([None, None, 3])
        return pixels, origin


def _nearest_index(length: tf.Tensor, size: int, flip: tf.Tensor | None = None) -> tf.Tensor:
    """Source indices of ``tf.image.resize(..., NEAREST_NEIGHBOR)`` from ``length`` to ``size``
    (half-pixel centres; the same float32 arithmetic as TensorFlow's kernel, so the selected
    pixels are identical), optionally of the left-right flipped source."""
    scale = tf.cast(length, tf.float32) / size
    index = tf.cast(tf.floor((tf.range(size, dtype=tf.float32) + 0.5) * scale), tf.int32)
    index = tf.minimum(index, length - 1)
    if flip is not None:
        index = tf.where(flip, length - 1 - index, index)
    return index


def _resize_mask(mask: tf.Tensor, window: tf.Tensor, flip: tf.Tensor, size: int) -> tf.Tensor:
    """Crop, optional flip and nearest resize of a uint8 ``[H, W, 1]`` mask in two row gathers.

    Equal to cropping, flipping and ``tf.image.resize(NEAREST_NEIGHBOR)``; gathering whole rows
    (and, after a transpose, whole columns) avoids TensorFlow's per-pixel copy loops for
    one-byte elements, ~5x cheaper.
    """
    rows = tf.gather(mask[..., 0], window[0] + _nearest_index(window[2], size))
    # Transposing one-byte elements is the slow step: cut the rows to the window's columns
    # first (a copy of contiguous row segments) so that only those are transposed.
    rows = rows[:, window[1]:window[1] + window[3]]
    cols = tf.gather(tf.transpose(rows), _nearest_index(window[3], size, flip))
    return tf.transpose(cols)[..., None]


def _resize_image(pixels: tf.Tensor, window: tf.Tensor, flip: tf.Tensor, size: int) -> tf.Tensor:
    """Crop, optional flip, bicubic resize (half-pixel centres) and clip to [0, 1]."""
    image = _crop(pixels, window)
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    # Casting first is exact (uint8 -> float32) and faster than the kernel's per-tap casts.
    image = tf.raw_ops.ResizeBicubic(images=tf.cast(image, tf.float32)[None], size=[size, size],
                                     half_pixel_centers=True)[0]
    # Bicubic overshoots outside [0, 255]. ClipByValue is one pass over the view;
    # tf.clip_by_value is a minimum and a maximum, two.
    image = tf.raw_ops.ClipByValue(t=image / 255.0, clip_value_min=0.0, clip_value_max=1.0)
    image.set_shape([size, size, 3])
    return image


def _views(source: _CropDecoder, mask: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
           image_size: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    return _render_views(*source.region(windows), mask, windows, flips, image_size)


def _render_views(pixels: tf.Tensor, origin: tf.Tensor, mask: tf.Tensor, windows: tf.Tensor,
                  flips: tf.Tensor, image_size: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    origin = tf.concat([origin, [0, 0]], 0)
    out = []
    for i in range(windows.shape[0]):
        image = _resize_image(pixels, windows[i] - origin, flips[i], image_size)
        view_mask = _resize_mask(mask, windows[i], flips[i], image_size)
        view_mask.set_shape([image_size, image_size, 1])
        out.append((image, view_mask))
    return out


def _prepare_mask(mask: tf.Tensor | None, shape: tf.Tensor, name: tf.Tensor | str) -> tf.Tensor:
    """Mask -> uint8 ``[H, W, 1]`` checked against the image shape (zeros when None)."""
    if mask is None:
        return tf.zeros(tf.concat([shape, [1]], 0), tf.uint8)
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    mask = tf.cast(mask[..., :1], tf.uint8)  # integer ids wrap modulo 256, as the official uint8
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(mask)[:2], shape)),
        ["Mask size differs from its image in record", name, "mask", tf.shape(mask)[:2],
         "image", shape])
    with tf.control_dependencies([check]):
        return tf.identity(mask)


def two_views(
    image_bytes: tf.Tensor,
    mask: tf.Tensor | None,
    *,
    image_size: int = 224,
    seed: tf.Tensor | None = None,
    random_flip: bool = True,
    name: tf.Tensor | str = "<unnamed>",
    cover_size: int | None = None,
) -> dict[str, tf.Tensor]:
    """Two independently cropped and flipped views of one image with their masks.

    Each view draws its own crop window (official recipe, see ``random_crop_window``) and
    flip; the image is decoded once for both (see ``_CropDecoder``).

    Args:
      image_bytes: encoded JPEG/PNG bytes, or an already decoded uint8 ``[H, W, 3]`` image.
      mask: integer id map ``[H, W]`` or ``[H, W, 1]`` of the full image, or None (zeros).
      image_size: output side S.
      seed: optional ``[2]`` int seed for stateless (reproducible) sampling; stateful when None.
      random_flip: left-right flip each view with probability 1/2.
      name: record name used in error messages.
      cover_size: also emit the window covering both views (the learned masks' discovery
        input, ``masks.source='learned'``), resized to this side; None: not emitted.

    Returns:
      ``view1``, ``view2`` float32 ``[S, S, 3]`` in [0, 1]; ``mask1``, ``mask2`` uint8
      ``[S, S, 1]``. With ``cover_size``: ``cover`` float32 ``[C, C, 3]`` in [0, 1] (the
      bounding box of both windows, squashed to a square, never flipped); ``cover_box1``,
      ``cover_box2`` float32 ``[4]``: each view's window ``(top, left, height, width)`` as
      fractions of the covering window's height and width; ``cover_flip1``, ``cover_flip2``
      int32 (1: the view is flipped left-right).
    """
    source = _CropDecoder(image_bytes)
    mask = _prepare_mask(mask, source.shape, name)
    windows, flips = _two_windows(source.shape, seed, random_flip)
    pixels, origin = source.region(windows)
    views = _render_views(pixels, origin, mask, windows, flips, image_size)
    out = {"view1": views[0][0], "mask1": views[0][1],
           "view2": views[1][0], "mask2": views[1][1]}
    if cover_size is not None:
        out.update(_cover(pixels, origin, windows, flips, cover_size))
    return out


def _cover(pixels: tf.Tensor, origin: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
           size: int) -> dict[str, tf.Tensor]:
    """The window covering both views (their exact bounding box), resized to ``size`` x
    ``size`` (bicubic, not flipped), and each view's box and flip relative to it."""
    top = tf.reduce_min(windows[:, :2], axis=0)
    extent = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0) - top
    box = tf.concat([top, extent], 0)
    image = _resize_image(pixels, box - tf.concat([origin, [0, 0]], 0), tf.constant(False), size)
    scale = tf.cast(tf.tile(extent, [2]), tf.float32)
    rel = tf.cast(windows - tf.concat([top, [0, 0]], 0)[None], tf.float32) / scale[None]
    return {"cover": image, "cover_box1": rel[0], "cover_box2": rel[1],
            "cover_flip1": tf.cast(flips[0], tf.int32), "cover_flip2": tf.cast(flips[1], tf.int32)}


def whole_image(pixels: tf.Tensor, size: int) -> tf.Tensor:
    """A decoded uint8 ``[H, W, 3]`` image squashed to ``size`` x ``size``: float32 in [0, 1],
    the bicubic resize of the views and of the covering window (``masks.source='learned'``)."""
    shape = tf.shape(pixels)
    return _resize_image(pixels, tf.stack([0, 0, shape[0], shape[1]]), tf.constant(False), size)


def one_view(
    image_bytes: tf.Tensor,
    mask: tf.Tensor | None = None,
    *,
    image_size: int = 224,
    crop: str = "center",
    crop_padding: int = 32,
    seed: tf.Tensor | None = None,
    name: tf.Tensor | str = "<unnamed>",
) -> tuple[tf.Tensor, tf.Tensor]:
    """One view for evaluation: ``crop`` is ``center`` (official eval crop), ``random``
    (random crop + flip, linear-eval training) or ``resize`` (whole image squashed to S x S).

    Returns float32 ``[S, S, 3]`` image in [0, 1] and uint8 ``[S, S, 1]`` mask.
    """
    source = _CropDecoder(image_bytes)
    shape = source.shape
    mask = _prepare_mask(mask, shape, name)
    flip = tf.constant(False)
    if crop == "center":
        window = center_crop_window(shape, image_size, crop_padding)
    elif crop == "resize":
        window = tf.stack([0, 0, shape[0], shape[1]])
    elif crop == "random":
        u = _uniform([1, 5], 0.0, 1.0, tf.float32, seed)
        window = _windows_from_uniforms(shape, u)[0]
        flip = u[0, 4] < 0.5
    else:
        raise ValueError(f"crop must be center, random or resize, got {crop!r}")
    return _views(source, mask, window[None], flip[None], image_size)[0]
