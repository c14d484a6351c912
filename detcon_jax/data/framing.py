"""The framing check of encoded images, and the count of the images it skips.

Corrupt or truncated files are dropped from the stream, not fatal: a structural check (end
marker present) costs microseconds per image, unlike a second full decode, and catches the
common corruption (truncation). Every skipped image is counted and named in `PipelineStats`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from detcon_jax.data import decode


@dataclasses.dataclass
class PipelineStats:
    """Counts images skipped because they are corrupt or truncated (thread-safe).

    The pipeline calls ``record_skipped`` from inside tf.data (through ``tf.py_function``, only
    on the rare bad path) so the count is exact for everything that has been consumed. Each
    pipeline is given its caller's own object.
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


def num_skipped(stats: PipelineStats) -> int:
    """Number of corrupt/truncated images skipped so far by the pipelines counting in ``stats``."""
    return stats.skipped


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
    signature check.
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

    return tf.cond(decode.is_jpeg(image_bytes), jpeg_ok, png_ok)


def filter_valid(ds: tf.data.Dataset, stats: PipelineStats,
                 is_valid: Callable[[dict], tf.Tensor] | None = None) -> tf.data.Dataset:
    """Drops examples whose encoded image fails validation (``is_valid_encoded_image``, or the
    given predicate of an example), counting them in ``stats``; decoded images pass."""

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
