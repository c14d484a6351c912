"""tf.data input pipeline: image sources with segmentation masks -> augmented views -> host batches.

Geometry (crop window, flip, resize) is applied identically to an image and its mask, following
the official DetCon pre-processing (``utils/tf_image_ops.py`` there): one random crop window with
area in [0.08, 1] of the image and log aspect ratio in [log 3/4, log 4/3], drawn once and clipped
to the image (no retries), a left-right flip with probability 1/2, bicubic resize of the image
clipped to [0, 1] and nearest-neighbour resize of the mask. Photometric augmentations run on
device (``detcon_jax.augment``), not here.

Sources (``make_pretrain_dataset(source=...)``):

* ``imagenet_fh``: TFRecords in the official layout (``image/encoded``, ``image/class/label``
  1-based, ``image/felzenszwalb_segmentations`` = raw uint8 bytes of the ``[K, H, W]`` stack of
  K Felzenszwalb settings), shards ``{split}-*-of-*``; written by ``detcon_jax.fh_masks``.
* ``tfds``: a TFDS data set prepared in a local data dir (never downloaded); masks from
  ``panoptic_image`` (coco/2017_panoptic), per-instance masks (merged to one id map) or a
  VOC-style segmentation image feature.
* ``folder``: ``DIR/images/*.jpg|png`` with optional ``DIR/labels/NAME.png`` id maps.
* ``skimage``: the colour photos bundled in scikit-image's package data directory.
* ``synthetic``: generated images of coloured rectangles and ellipses with their id map.

Mask kinds (``mask_source``): ``fh`` (from the records, or Felzenszwalb computed on the fly),
``gt`` (ground-truth id maps), ``grid`` (an n x n grid laid over the original image before
cropping, so that ids correspond across views) and ``none`` (all-zero masks, for BYOL/SimCLR;
the batch structure stays the same).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

AUTOTUNE = tf.data.AUTOTUNE

SOURCES = ("imagenet_fh", "tfds", "folder", "skimage", "synthetic")
MASK_SOURCES = ("fh", "gt", "grid", "none")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Colour photographs shipped inside scikit-image's package data directory (grey-scale,
# synthetic and RGBA pictures left out).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)

_FH_FEATURE = "image/felzenszwalb_segmentations"
_JPEG_ALIGN = 16


# ---------------------------------------------------------------------------------------------
# Skipped-image accounting.


@dataclasses.dataclass
class PipelineStats:
    """Counts images skipped because they are corrupt or truncated (thread-safe).

    The pipeline calls ``record_skipped`` from inside tf.data (through ``tf.py_function``, only
    on the rare bad path) so the count is exact for everything that has been consumed.
    """

    skipped: int = 0
    skipped_names: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def record_skipped(self, name: Any) -> None:
        name = name.numpy() if hasattr(name, "numpy") else name
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        with self._lock:
            self.skipped += 1
            if name not in self.skipped_names:
                self.skipped_names.append(name)
                logging.warning("Skipping corrupt or truncated image: %s", name)


STATS = PipelineStats()


def num_skipped(stats: PipelineStats | None = None) -> int:
    """Number of corrupt/truncated images skipped so far (module-wide stats by default)."""
    return (stats or STATS).skipped


# ---------------------------------------------------------------------------------------------
# Decoding and geometry (usable eagerly and inside tf.data).


def _is_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
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
        _is_jpeg(image),
        lambda: tf.image.extract_jpeg_shape(image)[:2],
        lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False))[:2])


def _uniform(shape, minval, maxval, dtype, seed):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


_LOG_RATIO = (float(np.log(3 / 4)), float(np.log(4 / 3)))


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


def grid_mask(shape: tf.Tensor, grid_size: int) -> tf.Tensor:
    """uint8 ``[H, W, 1]``: ``grid_size`` x ``grid_size`` cells with row-major ids."""
    height, width = shape[0], shape[1]
    rows = tf.range(height) * grid_size // height
    cols = tf.range(width) * grid_size // width
    ids = rows[:, None] * grid_size + cols[None, :]
    return tf.cast(ids, tf.uint8)[..., None]


def _crop(x: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return x[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


class _Source:
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
            self.full = decode_image(image)
            self.shape = tf.shape(self.full)[:2]
            return
        self.bytes, self.is_jpeg = image, _is_jpeg(image)
        self.full = tf.cond(self.is_jpeg, lambda: tf.zeros([0, 0, 3], tf.uint8),
                            lambda: decode_image(image))
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


def _views(source: _Source, mask: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
           image_size: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    pixels, origin = source.region(windows)
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
) -> dict[str, tf.Tensor]:
    """Two independently cropped and flipped views of one image with their masks.

    Each view draws its own crop window (official recipe, see ``random_crop_window``) and
    flip; the image is decoded once for both (see ``_Source``).

    Args:
      image_bytes: encoded JPEG/PNG bytes, or an already decoded uint8 ``[H, W, 3]`` image.
      mask: integer id map ``[H, W]`` or ``[H, W, 1]`` of the full image, or None (zeros).
      image_size: output side S.
      seed: optional ``[2]`` int seed for stateless (reproducible) sampling; stateful when None.
      random_flip: left-right flip each view with probability 1/2.
      name: record name used in error messages.

    Returns:
      ``view1``, ``view2`` float32 ``[S, S, 3]`` in [0, 1]; ``mask1``, ``mask2`` uint8
      ``[S, S, 1]``.
    """
    source = _Source(image_bytes)
    mask = _prepare_mask(mask, source.shape, name)
    # One draw of every random number of both views (crop: 4 per view, flip: 1 per view).
    u = _uniform([2, 5], 0.0, 1.0, tf.float32, seed)
    windows = _windows_from_uniforms(source.shape, u)
    flips = u[:, 4] < 0.5 if random_flip else tf.zeros([2], tf.bool)
    views = _views(source, mask, windows, flips, image_size)
    return {"view1": views[0][0], "mask1": views[0][1],
            "view2": views[1][0], "mask2": views[1][1]}


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
    source = _Source(image_bytes)
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


# ---------------------------------------------------------------------------------------------
# Validation of encoded images (corrupt / truncated files are skipped and counted).


def _has_marker(tail: tf.Tensor, marker: bytes) -> tf.Tensor:
    data = tf.io.decode_raw(tail, tf.uint8)
    n = len(marker)
    length = tf.shape(data)[0]
    hits = tf.ones([tf.maximum(length - n + 1, 0)], tf.bool)
    for i, byte in enumerate(marker):
        hits = hits & tf.equal(data[i:length - n + 1 + i], byte)
    return tf.reduce_any(hits)


def is_valid_encoded_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Cheap structural check: JPEG needs SOI ... EOI, PNG its signature ... IEND.

    Truncation (the common corruption) removes the end marker. Non-image bytes fail the
    signature check. Checking the framing costs microseconds, unlike a second full decode.
    """
    size = tf.strings.length(image_bytes)

    def tail(n):
        return tf.strings.substr(image_bytes, tf.maximum(size - n, 0), n)

    def jpeg_ok():
        # Almost every JPEG ends exactly with EOI: two bytes to compare before a tail search.
        return tf.cond(tf.equal(tail(2), b"\xff\xd9"), lambda: tf.constant(True),
                       lambda: _has_marker(tail(64), b"\xff\xd9"))

    def png_ok():
        is_png = tf.equal(tf.strings.substr(image_bytes, 0, 8), b"\x89PNG\r\n\x1a\n")
        return tf.logical_and(is_png, _has_marker(tail(64), b"IEND"))

    return tf.cond(_is_jpeg(image_bytes), jpeg_ok, png_ok)


def _filter_valid(ds: tf.data.Dataset, stats: PipelineStats,
                  is_valid: Callable[[dict], tf.Tensor] | None = None) -> tf.data.Dataset:
    """Drops examples whose encoded image fails validation (``is_valid_encoded_image``, or the
    given predicate of an example), counting them in ``stats``."""

    def check(ex):
        image = ex["image"]
        if image.dtype != tf.string:
            return tf.constant(True)
        ok = is_valid(ex) if is_valid else is_valid_encoded_image(image)

        def report():
            tf.py_function(stats.record_skipped, [ex["name"]], [])
            return tf.constant(False)

        return tf.cond(ok, lambda: tf.constant(True), report)

    return ds.filter(check)


# ---------------------------------------------------------------------------------------------
# Felzenszwalb on the fly.


def felzenszwalb_numpy(image: np.ndarray, scale: float = 1000, min_size: int = 1000) -> np.ndarray:
    """skimage Felzenszwalb segmentation as uint8 ids (wrapping at 256, as official)."""
    import skimage.segmentation

    seg = skimage.segmentation.felzenszwalb(image, scale=scale, min_size=int(min_size))
    return seg.astype(np.uint8)


def felzenszwalb_tf(image: tf.Tensor, scale: float = 1000, min_size: int = 1000) -> tf.Tensor:
    """uint8 ``[H, W, 1]`` Felzenszwalb ids of a decoded uint8 image via ``tf.numpy_function``."""
    seg = tf.numpy_function(
        lambda x: felzenszwalb_numpy(x, scale, min_size), [image], tf.uint8, stateful=False)
    seg = tf.reshape(seg, tf.concat([tf.shape(image)[:2], [1]], 0))
    return seg


# ---------------------------------------------------------------------------------------------
# Sources. Each yields dicts: image (string bytes or uint8 [H, W, 3]), mask (uint8 [H, W, 1] or
# an empty [0, 0, 1] placeholder when the source has none), label int32, name string.


def _example(image, mask=None, label=-1, name=""):
    if mask is None:
        mask = tf.zeros([0, 0, 1], tf.uint8)
    return {"image": image, "mask": mask, "label": tf.cast(label, tf.int32),
            "name": tf.convert_to_tensor(name, tf.string)}


def _shard_list(items: Sequence[Any], process_index: int, process_count: int, what: str) -> list:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    shard = list(items)[process_index::process_count]
    if not shard:
        raise ValueError(
            f"{what}: {len(items)} item(s) cannot be split over {process_count} processes "
            f"(process {process_index} would get none)")
    return shard


def _parse_fh_fields(record: tf.Tensor, name: tf.Tensor | str) -> dict[str, tf.Tensor]:
    features = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/class/label": tf.io.FixedLenFeature((), tf.int64, default_value=0),
        "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
        _FH_FEATURE: tf.io.VarLenFeature(tf.string),
    }
    parsed = tf.io.parse_single_example(record, features)
    fh = tf.sparse.to_dense(parsed[_FH_FEATURE], default_value="")
    return {
        "image": parsed["image/encoded"],
        "fh": tf.io.decode_raw(tf.strings.reduce_join(fh), tf.uint8),
        # The official layout stores 1-based labels (0 = none).
        "label": tf.cast(parsed["image/class/label"] - 1, tf.int32),
        "name": tf.strings.join([name, parsed["image/filename"]], separator=" "),
    }


def _fh_stack_to_mask(ex: dict[str, tf.Tensor], fh_index: int) -> dict[str, tf.Tensor]:
    image, fh, name = ex["image"], ex["fh"], ex["name"]

    def reshape():
        shape = image_shape(image)
        plane = shape[0] * shape[1]
        size = tf.shape(fh)[0]
        check = tf.debugging.Assert(
            tf.logical_and(size % plane == 0, size // plane > fh_index),
            ["Felzenszwalb mask size differs from its image in record", name, "mask bytes",
             size, "image", shape])
        with tf.control_dependencies([check]):
            stack = tf.reshape(fh, tf.concat([[size // plane], shape], 0))
        return stack[fh_index][..., None]

    mask = tf.cond(tf.size(fh) > 0, reshape, lambda: tf.zeros([0, 0, 1], tf.uint8))
    mask.set_shape([None, None, 1])
    return _example(image, mask, ex["label"], name)


def parse_fh_record(record: tf.Tensor, name: tf.Tensor | str = "<record>",
                    fh_index: int = 0) -> dict[str, tf.Tensor]:
    """Parses one official ImageNet-FH ``tf.train.Example``.

    Returns ``image`` (encoded bytes), ``mask`` uint8 ``[H, W, 1]`` (FH setting ``fh_index`` of
    the stored ``[K, H, W]`` stack; an empty ``[0, 0, 1]`` tensor when the record has none),
    ``label`` int32 (0-based: the stored label is 1-based) and ``name``.
    """
    return _fh_stack_to_mask(_parse_fh_fields(record, name), fh_index)


def _tfrecord_source(data_dir, split, process_index, process_count, shuffle_files, seed,
                     fh_index, stats, finish):
    pattern = os.path.join(str(data_dir), f"{split}-*-of-*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"imagenet_fh: no TFRecord shards match {pattern}")
    files = _shard_list(files, process_index, process_count, f"imagenet_fh shards {pattern}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def parse(record):
        # Parsing, the mask reshape and ``finish`` in one function: every dataset stage costs a
        # function call and a hand-over per element, as much as the parsing itself. For the
        # same reason records are named by their ``image/filename`` alone (tracking the shard
        # and index per record cost ~5 % of the pipeline's time).
        ex = _parse_fh_fields(record, data_dir_name)
        # The mask reshape reads the image header: only for images that pass validation. The
        # others get an empty mask (valid ones never do: ``finish`` requires the stored masks
        # or makes grid / all-zero ones) and are dropped, and counted, by the filter below.
        empty = _example(ex["image"], None, ex["label"], ex["name"])
        return tf.cond(is_valid_encoded_image(ex["image"]),
                       lambda: finish(_fh_stack_to_mask(ex, fh_index)), lambda: empty)

    data_dir_name = f"{data_dir}/{split}:"
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                       block_length=1, num_parallel_calls=AUTOTUNE)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
    return _filter_valid(ds, stats, lambda ex: tf.size(ex["mask"]) > 0)


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


def _list_images(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _folder_source(data_dir, mask_source, process_index, process_count):
    root = pathlib.Path(data_dir)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"folder source: {image_dir} does not exist")
    images = _list_images(image_dir)
    if not images:
        raise FileNotFoundError(f"folder source: no .jpg/.png images in {image_dir}")
    labels = []
    if mask_source == "gt":
        for path in images:
            label = root / "labels" / (path.stem + ".png")
            if not label.is_file():
                raise FileNotFoundError(f"folder source: mask_source='gt' but {label} is missing")
            labels.append(str(label))
    labels = labels or [""] * len(images)
    pairs = _shard_list(list(zip(map(str, images), labels, strict=True)), process_index,
                        process_count,
                        f"folder {image_dir}")
    paths, label_paths = zip(*pairs, strict=True)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(label_paths)))

    def load(path, label_path):
        mask = None
        if mask_source == "gt":
            mask = decode_id_png(tf.io.read_file(label_path), label_path)
        return _example(tf.io.read_file(path), mask, -1, path)

    return ds, load


def _skimage_source(process_index, process_count):
    import skimage

    root = pathlib.Path(skimage.data_dir)
    paths = [str(root / name) for name in SKIMAGE_PHOTOS if (root / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"skimage source: none of {SKIMAGE_PHOTOS} found in {root}")
    paths = _shard_list(paths, process_index, process_count, "skimage photos")
    ds = tf.data.Dataset.from_tensor_slices(paths)
    return ds, lambda path: _example(tf.io.read_file(path), None, -1, path)


def synthetic_images(num_images: int, height: int = 128, width: int = 160, *, seed: int = 0,
                     max_shapes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Images of coloured rectangles/ellipses on a coloured background, with their id maps.

    Returns uint8 images ``[N, H, W, 3]`` and uint8 id maps ``[N, H, W]`` (0 = background,
    shape k drawn later overwrites earlier ones).
    """
    rng = np.random.default_rng(seed)
    images = np.zeros([num_images, height, width, 3], np.uint8)
    ids = np.zeros([num_images, height, width], np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for n in range(num_images):
        num_shapes = rng.integers(2, max_shapes + 1)
        colours = rng.permutation(np.stack(np.meshgrid(*[np.linspace(20, 235, 4)] * 3), -1)
                                  .reshape(-1, 3))[:num_shapes + 1].astype(np.uint8)
        images[n] = colours[0]
        for k in range(1, num_shapes + 1):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
            if rng.random() < 0.5:
                inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            else:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            images[n][inside] = colours[k]
            ids[n][inside] = k
    return images, ids


def _synthetic_source(num_images, height, width, seed, process_index, process_count):
    images, ids = synthetic_images(num_images, height, width, seed=seed)
    index = _shard_list(range(num_images), process_index, process_count, "synthetic images")
    names = [f"synthetic:{i}" for i in index]
    ds = tf.data.Dataset.from_tensor_slices(
        (images[index], ids[index][..., None], np.full(len(index), -1, np.int32), names))
    return ds, lambda image, mask, label, name: _example(image, mask, label, name)


_TFDS_MASK_KEYS = ("segmentation_mask", "segmentation_label", "label_image", "annotation",
                   "semantic_segmentation", "mask")


def tfds_mask(example: dict[str, Any]) -> tf.Tensor | None:
    """An id map uint8 ``[H, W, 1]`` from a TFDS example, or None when it has no masks.

    ``panoptic_image`` (COCO panoptic: id = R + 256 G + 65536 B) is renumbered to consecutive
    ids in order of appearance; stacked per-instance masks (``objects/segmentation`` or
    ``objects/mask``, ``[N, H, W(, 1)]``) are merged with instance k -> id k + 1 (later instances
    win overlaps, background 0); VOC-style segmentation images use their first channel.
    """
    if "panoptic_image" in example:
        rgb = tf.cast(example["panoptic_image"], tf.int32)
        flat = tf.reshape(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], [-1])
        _, idx = tf.unique(flat)
        return tf.cast(tf.reshape(idx, tf.shape(rgb)[:2]), tf.uint8)[..., None]
    objects = example.get("objects", {})
    for key in ("segmentation", "mask"):
        if isinstance(objects, dict) and key in objects:
            inst = tf.cast(objects[key], tf.int32)
            if inst.shape.rank == 4:
                inst = inst[..., 0]
            count = tf.shape(inst)[0]
            ids = tf.cast(inst > 0, tf.int32) * tf.reshape(tf.range(1, count + 1), [-1, 1, 1])
            # A zero plane keeps the reduction defined for images without instances.
            ids = tf.concat([tf.zeros_like(ids[:1]), ids], 0)
            return tf.cast(tf.reduce_max(ids, axis=0), tf.uint8)[..., None]
    for key in _TFDS_MASK_KEYS:
        if key in example:
            mask = tf.convert_to_tensor(example[key])
            if mask.shape.rank == 2:
                mask = mask[..., None]
            return tf.cast(mask[..., :1], tf.uint8)
    return None


def _tfds_source(name, data_dir, split, mask_source, process_index, process_count, seed,
                 shuffle_files):
    import tensorflow_datasets as tfds

    if not name:
        raise ValueError("tfds source needs tfds_name (e.g. 'coco/2017_panoptic')")
    splits = tfds.even_splits(split, n=process_count)
    try:
        ds = tfds.load(name, split=splits[process_index], data_dir=data_dir, download=False,
                       shuffle_files=shuffle_files,
                       read_config=tfds.ReadConfig(shuffle_seed=seed))
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        raise FileNotFoundError(
            f"tfds source: {name!r} split {split!r} is not prepared in data_dir={data_dir!r} "
            f"(this pipeline never downloads; run tfds build there first): {e}") from None

    def load(ex):
        mask = tfds_mask(ex) if mask_source == "gt" else None
        if mask_source == "gt" and mask is None:
            raise ValueError(f"tfds source: {name} has no segmentation feature for mask 'gt'")
        label = ex.get("label", tf.constant(-1))
        label = label if label.shape.rank == 0 else tf.constant(-1)
        names = [ex[k] for k in ("image/filename", "file_name", "filename") if k in ex]
        filename = tf.strings.join([name, names[0]], ":") if names else name
        return _example(ex["image"], mask, label, filename)

    return ds, load


# ---------------------------------------------------------------------------------------------
# Public dataset builders.


def source_dataset(
    source: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    mask_source: str = "fh",
    tfds_name: str | None = None,
    grid_size: int = 4,
    fh_scale: float = 1000,
    fh_min_size: int = 1000,
    fh_index: int = 0,
    synthetic_num_images: int = 64,
    synthetic_shape: tuple[int, int] = (128, 160),
    process_index: int = 0,
    process_count: int = 1,
    shuffle_files: bool = False,
    seed: int = 0,
    stats: PipelineStats | None = None,
) -> tf.data.Dataset:
    """Un-augmented examples of a source with their full-resolution masks materialised.

    Elements: ``image`` (encoded bytes, or uint8 ``[H, W, 3]`` for tfds/synthetic), ``mask``
    uint8 ``[H, W, 1]`` (zeros for ``mask_source='none'``), ``label`` int32 (-1 unknown),
    ``name`` string. Corrupt or truncated encoded images are dropped and counted in ``stats``.
    Arguments as in ``make_pretrain_dataset``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    if mask_source == "gt" and source in ("skimage", "imagenet_fh"):
        raise ValueError(f"mask_source='gt': source {source!r} has no ground-truth masks")
    stats = stats or STATS
    fn: Callable[..., dict] | None = None
    if source == "imagenet_fh":
        if data_dir is None:
            raise ValueError("imagenet_fh source needs data_dir")

        def finish(ex):
            return _materialise_mask(ex, source, mask_source, grid_size, fh_scale, fh_min_size)

        return _tfrecord_source(data_dir, split, process_index, process_count, shuffle_files,
                                seed, fh_index, stats, finish)
    if source == "folder":
        if data_dir is None:
            raise ValueError("folder source needs data_dir")
        ds, fn = _folder_source(data_dir, mask_source, process_index, process_count)
    elif source == "skimage":
        ds, fn = _skimage_source(process_index, process_count)
    elif source == "synthetic":
        ds, fn = _synthetic_source(synthetic_num_images, *synthetic_shape, seed, process_index,
                                   process_count)
    else:
        ds, fn = _tfds_source(tfds_name, data_dir, split, mask_source, process_index,
                              process_count, seed, shuffle_files)
    if fn is not None:
        ds = ds.map(lambda *args: fn(*args), num_parallel_calls=AUTOTUNE)
        ds = _filter_valid(ds, stats)
    return ds.map(lambda ex: _materialise_mask(ex, source, mask_source, grid_size, fh_scale,
                                               fh_min_size), num_parallel_calls=AUTOTUNE)


def _materialise_mask(ex, source, mask_source, grid_size, fh_scale, fh_min_size):
    ex = dict(ex)
    if mask_source == "none":
        ex["mask"] = tf.zeros(tf.concat([image_shape(ex["image"]), [1]], 0), tf.uint8)
    elif mask_source == "grid":
        ex["mask"] = grid_mask(image_shape(ex["image"]), grid_size)
    elif mask_source == "fh" and source != "imagenet_fh":
        image = decode_image(ex["image"])
        ex["image"] = image  # decode once; two_views accepts decoded images
        ex["mask"] = felzenszwalb_tf(image, fh_scale, fh_min_size)
    elif mask_source == "fh":
        check = tf.debugging.Assert(
            tf.size(ex["mask"]) > 0,
            ["Record has no image/felzenszwalb_segmentations:", ex["name"]])
        with tf.control_dependencies([check]):
            ex["mask"] = tf.identity(ex["mask"])
    return ex


def _options(deterministic: bool, threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    if threads:
        options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return options


def make_pretrain_dataset(
    source: str,
    *,
    batch_size: int,
    image_size: int = 224,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    mask_source: str = "fh",
    tfds_name: str | None = None,
    grid_size: int = 4,
    fh_scale: float = 1000,
    fh_min_size: int = 1000,
    fh_index: int = 0,
    synthetic_num_images: int = 64,
    synthetic_shape: tuple[int, int] = (128, 160),
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    repeat: bool = True,
    cache: bool = False,
    deterministic: bool = False,
    seed: int | None = None,
    prefetch: int = AUTOTUNE,
    threads: int | None = None,
    stats: PipelineStats | None = None,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Per-host batches of two augmented views with masks for DetCon pre-training.

    Args:
      source: one of ``SOURCES``.
      batch_size: per-host batch size (``global_batch // process_count``); partial batches
        are dropped so shapes are static.
      image_size: output side S.
      data_dir: shard directory (``imagenet_fh``), root with ``images/`` and ``labels/``
        (``folder``), or TFDS data dir (``tfds``).
      split: record prefix (``imagenet_fh``: ``train``, ``validation``) or TFDS split.
      mask_source: ``fh``, ``gt``, ``grid`` or ``none`` (see module docstring).
      tfds_name: TFDS name, e.g. ``coco/2017_panoptic`` (``tfds`` source only).
      grid_size: cells per side for ``grid`` masks.
      fh_scale, fh_min_size: Felzenszwalb parameters for masks computed on the fly.
      fh_index: which stored Felzenszwalb setting to use when records hold several.
      synthetic_num_images, synthetic_shape: size of the ``synthetic`` source.
      process_index, process_count: this host's shard; files (or, for in-memory sources,
        examples) are split round-robin across processes.
      shuffle: shuffle files and examples (buffer ``shuffle_buffer``, default
        ``10 * batch_size`` as the official code).
      repeat: repeat forever (pre-training); False gives one pass.
      cache: cache the (encoded) examples in memory after the first pass.
      deterministic: fixed element order and, with ``seed``, reproducible augmentation; for
        tests and evaluation.
      seed: seed for shuffling and crops (crops use stateless ops keyed per element).
      prefetch: batches to prefetch.
      threads: private tf.data thread pool size (default: TF's).
      stats: where skipped corrupt images are counted (default: module-wide ``STATS``).
      skip_batches: batches to fast-forward past (resuming a run): the first batch is the one
        an uninterrupted pipeline yields after ``skip_batches`` batches. The examples are
        dropped before the crop/resize, so a fast-forward costs reading and shuffling, not
        pre-processing; it is exact whenever the element order is (``deterministic``).

    Returns:
      A dataset of dicts: ``view1``, ``view2`` float32 ``[b, S, S, 3]``; ``mask1``, ``mask2``
      uint8 ``[b, S, S, 1]``; ``label`` int32 ``[b]`` (-1 when unknown).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    ds = source_dataset(
        source, data_dir=data_dir, split=split, mask_source=mask_source, tfds_name=tfds_name,
        grid_size=grid_size, fh_scale=fh_scale, fh_min_size=fh_min_size, fh_index=fh_index,
        synthetic_num_images=synthetic_num_images, synthetic_shape=synthetic_shape,
        process_index=process_index, process_count=process_count, shuffle_files=shuffle,
        seed=seed or 0, stats=stats)
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer or 10 * batch_size, seed=seed,
                        reshuffle_each_iteration=True)
    # One stateless seed pair per element: reproducible given the element order. (Seeds
    # folded from the element index would save this zip stage, a gain lost in the machine's
    # drift, docs/performance.md, but would draw other crops than the documented runs.)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))
    if skip_batches:
        # The map below is one-to-one, so skipping whole batches' worth of (example, seed)
        # pairs here yields the same batches as skipping batches after it, minus their work.
        ds = ds.skip(skip_batches * batch_size)

    def preprocess(ex, element_seed):
        views = two_views(ex["image"], ex["mask"], image_size=image_size, seed=element_seed,
                          name=ex["name"])
        views["label"] = ex["label"]
        return views

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(prefetch)
    return ds.with_options(_options(deterministic, threads))


def data_dir_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory, local or remote (``gs://...``, via ``tf.io.gfile``)."""
    try:
        return bool(tf.io.gfile.isdir(str(path)))
    except (tf.errors.OpError, OSError):  # e.g. no credentials or an unknown file system
        return False


def num_examples(
    source: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    tfds_name: str | None = None,
    synthetic_num_images: int = 64,
) -> int:
    """Number of examples in a source split (all hosts together), for deriving steps.

    ``imagenet_fh`` counts records (fast for the official 1,281,167-image split thanks to the
    known ImageNet size when the 2048/1024 shard names match; otherwise by reading the files).
    """
    if source == "imagenet_fh":
        files = sorted(tf.io.gfile.glob(os.path.join(str(data_dir), f"{split}-*-of-*")))
        if not files:
            raise FileNotFoundError(f"imagenet_fh: no shards {split}-*-of-* in {data_dir}")
        known = {("train", 2048): 1281167, ("train", 1024): 1281167,
                 ("validation", 256): 50000, ("validation", 128): 50000}
        total = int(files[0].rsplit("-of-", 1)[1])
        if len(files) == total and (split, total) in known:
            return known[(split, total)]
        return int(sum(1 for f in files for _ in tf.data.TFRecordDataset(f)))
    if source == "folder":
        return len(_list_images(pathlib.Path(data_dir) / "images"))
    if source == "skimage":
        import skimage

        return sum((pathlib.Path(skimage.data_dir) / n).is_file() for n in SKIMAGE_PHOTOS)
    if source == "synthetic":
        return synthetic_num_images
    if source == "tfds":
        import tensorflow_datasets as tfds

        builder = tfds.builder(tfds_name, data_dir=data_dir)
        return builder.info.splits[split].num_examples
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


# ---------------------------------------------------------------------------------------------
# Evaluation data sets.


def class_folder_files(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Image files, 0-based labels and class names of ``root/CLASS/*.jpg|png`` (sorted)."""
    root = pathlib.Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"eval folder: no class sub-folders in {root}")
    files, labels = [], []
    for index, cls in enumerate(classes):
        for path in _list_images(root / cls):
            files.append(str(path))
            labels.append(index)
    if not files:
        raise FileNotFoundError(f"eval folder: no images under {root}/CLASS/")
    return files, labels, classes


def pad_batch(batch: dict[str, tf.Tensor], batch_size: int) -> dict[str, tf.Tensor]:
    """Pads a partial batch to ``batch_size`` with zeros; ``valid`` marks real examples."""
    n = tf.shape(batch["label"])[0]
    out = {"valid": tf.pad(tf.ones([n], tf.bool), [[0, batch_size - n]])}
    for key, value in batch.items():
        pads = [[0, batch_size - n]] + [[0, 0]] * (value.shape.rank - 1)
        padded = tf.pad(value, pads)
        padded.set_shape([batch_size] + value.shape.as_list()[1:])
        out[key] = padded
    out["valid"].set_shape([batch_size])
    return out


def _finish_eval(ds, train, shuffle_buffer, seed):
    """Shuffle + repeat for training; then one stateless seed pair per element, so that a
    single ordered pass with ``crop='random'`` is a reproducible augmented pass."""
    if train:
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
    seeds = tf.data.Dataset.random(seed=seed if seed is not None else (None if train else 0))
    return tf.data.Dataset.zip((ds, seeds.batch(2)))


def make_eval_dataset(
    source: str,
    *,
    batch_size: int,
    image_size: int = 224,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    tfds_name: str | None = None,
    train: bool = False,
    crop: str = "center",
    crop_padding: int = 32,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    deterministic: bool = True,
    stats: PipelineStats | None = None,
) -> tf.data.Dataset:
    """Labelled images for linear evaluation.

    Args:
      source: ``folder`` (``data_dir/split/CLASS/*.jpg|png``, classes in sorted order, e.g.
        the CIFAR-10 layout) or ``tfds`` (``tfds_name`` with ``image`` and ``label``).
      train: random crop + flip, shuffled and repeated (linear-probe training); otherwise one
        pass in file order with ``crop`` (``center``: the official centre crop with
        ``crop_padding``; ``resize``: the whole image; ``random``: random crop + flip,
        reproducible with ``seed``, e.g. for augmented feature passes) and the last batch
        padded.
      Other arguments as in ``make_pretrain_dataset``.

    Returns:
      Dicts of ``image`` float32 ``[b, S, S, 3]`` in [0, 1], ``label`` int32 ``[b]`` and, in
      eval mode, ``valid`` bool ``[b]`` (False on padding).
    """
    stats = stats or STATS
    if source == "folder":
        files, labels, _ = class_folder_files(pathlib.Path(data_dir) / split)
        pairs = _shard_list(list(zip(files, labels, strict=True)), process_index, process_count,
                            f"eval folder {data_dir}/{split}")
        paths, labels = zip(*pairs, strict=True)
        ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
        ds = ds.map(lambda p, y: _example(tf.io.read_file(p), None, y, p))
        ds = _filter_valid(ds, stats)
    elif source == "tfds":
        base, load = _tfds_source(tfds_name, data_dir, split, "none", process_index,
                                  process_count, seed or 0, train)
        ds = base.map(load)
    else:
        raise ValueError(f"eval source must be folder or tfds, got {source!r}")
    ds = _finish_eval(ds, train, shuffle_buffer, seed)
    view_crop = "random" if train else crop

    def preprocess(ex, element_seed):
        image, _ = one_view(ex["image"], None, image_size=image_size, crop=view_crop,
                            crop_padding=crop_padding, seed=element_seed, name=ex["name"])
        return {"image": image, "label": ex["label"]}

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    if train:
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size).map(lambda b: pad_batch(b, batch_size))
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic or not train, None))


def make_segmentation_dataset(
    data_dir: str | os.PathLike,
    *,
    batch_size: int,
    image_size: int = 224,
    split: str = "train",
    train: bool = False,
    crop: str = "resize",
    ignore_label: int = 255,
    void_ids: Sequence[int] = (),
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 1000,
    seed: int | None = None,
    deterministic: bool = True,
    stats: PipelineStats | None = None,
) -> tf.data.Dataset:
    """Images with dense labels from ``data_dir/split/{images,labels}`` (CamVid layout).

    Images are resized bicubic and labels nearest, both with the same geometry: ``train`` uses
    the pre-training random crop + flip; evaluation uses ``crop='resize'`` (whole image
    squashed to S x S, default; nothing is cut away) or ``'center'`` (official centre crop).
    Label values listed in ``void_ids`` (e.g. CamVid's 11 'Unlabelled') become
    ``ignore_label``.

    Returns:
      Dicts of ``image`` float32 ``[b, S, S, 3]``, ``label`` int32 ``[b, S, S]`` and, in eval
      mode, ``valid`` bool ``[b]``.
    """
    stats = stats or STATS
    root = pathlib.Path(data_dir) / split
    images = _list_images(root / "images") if (root / "images").is_dir() else []
    if not images:
        raise FileNotFoundError(f"segmentation dataset: no images in {root / 'images'}")
    labels = [root / "labels" / (p.stem + ".png") for p in images]
    for label in labels:
        if not label.is_file():
            raise FileNotFoundError(f"segmentation dataset: label {label} is missing")
    pairs = _shard_list(list(zip(map(str, images), map(str, labels), strict=True)), process_index,
                        process_count, f"segmentation {root}")
    paths, label_paths = zip(*pairs, strict=True)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(label_paths)))
    ds = ds.map(lambda p, q: _example(
        tf.io.read_file(p), tf.io.decode_png(tf.io.read_file(q), channels=1), -1, p))
    ds = _filter_valid(ds, stats)
    ds = _finish_eval(ds, train, shuffle_buffer, seed)
    void = tf.constant(list(void_ids) or [-1], tf.int32)

    def preprocess(ex, element_seed):
        # Labels ride through as the uint8 mask of one_view (ids < 256).
        image, label = one_view(ex["image"], ex["mask"], image_size=image_size,
                                crop="random" if train else crop, crop_padding=32,
                                seed=element_seed, name=ex["name"])
        label = tf.cast(label[..., 0], tf.int32)
        is_void = tf.reduce_any(tf.equal(label[..., None], void), axis=-1)
        label = tf.where(is_void, ignore_label, label)
        return {"image": image, "label": label}

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    if train:
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size).map(lambda b: pad_batch(b, batch_size))
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic or not train, None))


# Private names kept for callers written against the first version.
_class_folder_files = class_folder_files
_pad_batch = pad_batch
