"""Decoding of encoded images and id maps (usable eagerly and inside tf.data)."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types (PNG spec, section 11.2.2).
_GRAY, _RGB, _PALETTE, _GRAY_ALPHA, _RGBA = 0, 2, 3, 4, 6


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


def _palette_indices(data: bytes | np.ndarray) -> np.ndarray:
    # TensorFlow's PNG decoder always expands a palette to its colours; PIL keeps the indices.
    # numpy_function hands a string over as bytes in graphs, as a 0-d object array eagerly.
    data = data.item() if isinstance(data, np.ndarray) else data
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "P":
            raise ValueError(f"expected a palette PNG, PIL reads mode {image.mode!r}")
        return np.asarray(image, np.uint8)[..., None]


def decode_label_png(png_bytes: tf.Tensor | bytes,
                     name: tf.Tensor | str = "<unnamed>") -> tf.Tensor:
    """uint8 ``[H, W, 1]`` class ids of a label PNG (eagerly or inside tf.data).

    * palette PNGs (PASCAL VOC's ``SegmentationClass``, Cityscapes-style colour files saved
      with a palette): the palette *indices*, which are the class ids (VOC: 0..20, 255 =
      ignore / object boundary). ``tf.io.decode_png`` would return the palette colours, and
      a grey conversion of those is neither the id nor an error (VOC ids 1/15/255 became
      38/147/220).
    * grayscale PNGs (8-bit, or 16-bit with values < 256; SBD's ``SegmentationClassAug``,
      CamVid, Cityscapes ``*_labelIds.png``): the values, as `decode_id_png`.
    * RGB(A) PNGs: an error naming ``name``: colours are not class ids without a
      data-set-specific colour map.

    255 is passed through; callers treat it as the ignore label.
    """
    data = tf.convert_to_tensor(png_bytes, tf.string)
    check = tf.debugging.Assert(
        tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE),
        ["Label file is not a PNG:", name])
    with tf.control_dependencies([check]):
        colour = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 25, 1), tf.uint8)[0],
                         tf.int32)
    is_rgb = tf.logical_or(tf.equal(colour, _RGB), tf.equal(colour, _RGBA))
    check = tf.debugging.Assert(
        tf.logical_not(is_rgb),
        ["Label PNG is RGB(A), not class ids (convert it to ids or a palette):", name])

    def palette():
        ids = tf.numpy_function(_palette_indices, [data], tf.uint8, stateful=False)
        return tf.reshape(ids, tf.concat([tf.shape(ids)[:2], [1]], 0))

    with tf.control_dependencies([check]):
        ids = tf.cond(tf.equal(colour, _PALETTE), palette, lambda: decode_id_png(data, name))
    ids.set_shape([None, None, 1])
    return ids
