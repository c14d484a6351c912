"""Decoding of encoded images and id maps (usable eagerly and inside tf.data)."""

from __future__ import annotations

import tensorflow as tf


def is_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    """Whether encoded bytes are a JPEG (scalar bool)."""
    # Any JPEG (JFIF, EXIF, raw) starts with SOI + a marker; the official check only accepts
    # JFIF and so decodes EXIF JPEGs fully to get their shape.
    return tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")


def decode_image(image: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG bytes (or an already decoded uint8 image) -> uint8 ``[H, W, 3]``."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    elif image.dtype != tf.uint8:
        raise TypeError(f"image must be encoded bytes or uint8, got {image.dtype}")
    elif image.shape.rank == 2 or image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(tf.reshape(image, tf.concat([tf.shape(image)[:2], [1]],
                                                                      0)))
    image.set_shape([None, None, 3])
    return image


def image_shape(image: tf.Tensor) -> tf.Tensor:
    """int32 ``[H, W]`` of encoded bytes (JPEG header only) or of a decoded image."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.string:
        return tf.shape(image)[:2]
    return tf.cond(
        is_jpeg(image),
        lambda: tf.image.extract_jpeg_shape(image)[:2],
        lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False))[:2])


def decode_id_png(data: tf.Tensor, name: tf.Tensor | str = "<unnamed>") -> tf.Tensor:
    """uint8 ``[H, W, 1]`` ids of an id-map PNG; 16-bit PNGs must hold ids < 256.

    ``decode_png`` would silently rescale a 16-bit map to 8 bits (id 300 -> 1), so 16-bit
    files are decoded as such and an id >= 256 fails with the record ``name``.
    """
    depth = tf.io.decode_raw(tf.strings.substr(data, 24, 1), tf.uint8)  # IHDR bit depth

    def wide():
        ids = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
        top = tf.reduce_max(tf.cast(ids, tf.int32))
        check = tf.debugging.Assert(
            top < 256, ["Mask ids overflow uint8 (max id", top, ") in record", name])
        with tf.control_dependencies([check]):
            return tf.cast(ids, tf.uint8)

    ids = tf.cond(tf.reduce_any(tf.equal(depth, 16)), wide,
                  lambda: tf.io.decode_png(data, channels=1))
    ids.set_shape([None, None, 1])
    return ids
