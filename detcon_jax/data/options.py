"""The ``tf.data.Options`` every builder's dataset carries."""

from __future__ import annotations

import tensorflow as tf


def dataset_options(deterministic: bool, threads: int | None) -> tf.data.Options:
    """Autotuned parallel maps and batches, single-threaded ops inside each element (the
    parallelism is across elements), an optional private thread pool of ``threads``."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    if threads:
        options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return options
