"""Geometry of the dense-transfer protocols (image and label alike): DeepLab-style random
scale + crop + flip for training, padding to a fixed frame for evaluation at the labels'
own resolution (`pad_to_frame`, `frame_view`). Images are float32 in [0, 1]; labels int32
with ``ignore_label`` on every pixel that is padding."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from detcon_jax.data import decode, geometry


def _as_float(image: tf.Tensor) -> tf.Tensor:
    return tf.image.convert_image_dtype(decode.decode_image(image), tf.float32)


def _pad(image: tf.Tensor, label: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
         ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(label)
    pads = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
    image = tf.pad(image, pads + [[0, 0]])  # zeros: the padding is ignored in the loss
    label = tf.pad(label, pads, constant_values=ignore_label)
    return image, label


def scale_jitter_crop(image: tf.Tensor, label: tf.Tensor, *, crop_size: int,
                      scale_range: Sequence[float], seed: tf.Tensor,
                      ignore_label: int = 255) -> tuple[tf.Tensor, tf.Tensor]:
    """Random rescale by a factor uniform in ``scale_range``, random ``crop_size`` square
    crop (the scaled image padded with zeros / ``ignore_label`` first where smaller), random
    horizontal flip; all from the stateless ``seed`` ([2] int).

    Args:
      image: encoded bytes or uint8 ``[H, W, 3]``.
      label: int32 ``[H, W]`` class ids.

    Returns:
      float32 ``[C, C, 3]`` image and int32 ``[C, C]`` label.
    """
    pixels = _as_float(image)
    u = tf.random.stateless_uniform([4], seed)
    low, high = float(scale_range[0]), float(scale_range[1])
    scale = low + (high - low) * u[0]
    shape = tf.cast(tf.shape(label), tf.float32)
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    pixels = tf.image.resize(pixels, size, "bilinear")
    label = tf.image.resize(label[..., None], size, "nearest")[..., 0]
    pixels, label = _pad(pixels, label, crop_size, crop_size, ignore_label)
    room = tf.shape(label) - crop_size
    top = tf.cast(tf.floor(u[1] * tf.cast(room[0] + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(u[2] * tf.cast(room[1] + 1, tf.float32)), tf.int32)
    pixels = pixels[top:top + crop_size, left:left + crop_size]
    label = label[top:top + crop_size, left:left + crop_size]
    flip = u[3] < 0.5
    pixels = tf.cond(flip, lambda: pixels[:, ::-1], lambda: pixels)
    label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    pixels = tf.clip_by_value(pixels, 0.0, 1.0)
    pixels.set_shape([crop_size, crop_size, 3])
    label.set_shape([crop_size, crop_size])
    return pixels, label


def _fit_frame(pixels: tf.Tensor, label: tf.Tensor, frame: Sequence[int], ignore_label: int,
               name: tf.Tensor | str) -> tuple[tf.Tensor, tf.Tensor]:
    height, width = int(frame[0]), int(frame[1])
    shape = tf.shape(label)
    check = tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(tf.equal(tf.shape(pixels)[:2], shape)),
                       tf.logical_and(shape[0] <= height, shape[1] <= width)),
        ["Label/image size", shape, tf.shape(pixels)[:2], "does not fit the evaluation frame",
         [height, width], "(or differs from its image) in", name])
    with tf.control_dependencies([check]):
        pixels, label = _pad(pixels, label, height, width, ignore_label)
    label.set_shape([height, width])
    return pixels, label


def pad_to_frame(image: tf.Tensor, label: tf.Tensor, frame: Sequence[int], *,
                 ignore_label: int = 255,
                 name: tf.Tensor | str = "<unnamed>") -> tuple[tf.Tensor, tf.Tensor]:
    """Image and label, unscaled, padded bottom/right to ``frame`` = (H, W): predictions are
    compared with every label pixel at its own resolution. A larger image is an error naming
    ``name`` (choose a frame that holds the data set's largest image)."""
    pixels, label = _fit_frame(_as_float(image), label, frame, ignore_label, name)
    pixels.set_shape([int(frame[0]), int(frame[1]), 3])
    return pixels, label


def frame_view(image: tf.Tensor, label: tf.Tensor, frame: Sequence[int], *, image_size: int,
               ignore_label: int = 255,
               name: tf.Tensor | str = "<unnamed>") -> tuple[tf.Tensor, tf.Tensor]:
    """As `pad_to_frame`, then the padded image (only) resized to S x S as ``one_view``'s
    ``'resize'`` does. Every example maps the same frame onto the same S x S input, so logits
    upsampled to the frame line up with every label at its native resolution (for a data set
    of one image size, such as CamVid, the frame is that size and the view is ``'resize'``).

    Returns:
      float32 ``[S, S, 3]`` image and int32 ``[H, W]`` label (the frame).
    """
    pixels, label = _fit_frame(decode.decode_image(image), label, frame, ignore_label, name)
    view, _ = geometry.one_view(pixels, None, image_size=image_size, crop="resize", name=name)
    return view, label
