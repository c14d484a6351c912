"""The pre-training builder: a source's examples -> two augmented views with masks -> batches.

Stages, in order: the source's examples with their full-resolution masks (`source_dataset`),
the element order (cache, repeat, shuffle), one stateless seed pair per element, the resume
skip, the two-view geometry (``geometry.two_views``), batching and prefetch.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from detcon_jax.data import geometry, mask_sources, sources
from detcon_jax.data.framing import PipelineStats
from detcon_jax.data.options import dataset_options

AUTOTUNE = tf.data.AUTOTUNE


def source_dataset(
    data: Any,
    masks: Any,
    *,
    stats: PipelineStats,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_files: bool = False,
) -> tf.data.Dataset:
    """Un-augmented examples of a source with their full-resolution masks materialised.

    Args:
      data: ``config.data`` (``source``, ``path``, ``split``, ``tfds_name``,
        ``synthetic_num_images``, ``fh_scale``, ``fh_min_size``).
      masks: ``config.masks`` (``source``, ``grid_size``, ``fh_index``).
      stats: where skipped corrupt images are counted.
      seed: seed of the file shuffle and of generated (``synthetic``) data.
      process_index, process_count: this host's shard; files (or, for in-memory sources,
        examples) are split round-robin across processes.
      shuffle_files: shuffle the order of files each pass.

    Returns:
      A dataset of ``image`` (encoded bytes, or uint8 ``[H, W, 3]`` for tfds/synthetic or
      after computing FH), ``mask`` uint8 ``[H, W, 1]`` (zeros for ``mask_source='none'``),
      ``label`` int32 (-1 unknown), ``name`` string. Corrupt or truncated encoded images are
      dropped and counted in ``stats``.
    """
    source_class = sources.source_class(data.source)
    mask_sources.check_mask_source(masks.source)
    if masks.source == "gt" and not source_class.has_gt_masks:
        raise ValueError(f"mask_source='gt': source {data.source!r} has no ground-truth masks")
    source = source_class.from_config(data, masks)
    mask_fn = mask_sources.make_mask_fn(
        masks.source, stored_fh=source_class.stored_fh, grid_size=masks.grid_size,
        fh_scale=data.fh_scale, fh_min_size=data.fh_min_size)
    return source.dataset(sources.Shard(process_index, process_count),
                          shuffle_files=shuffle_files, seed=seed, stats=stats, mask_fn=mask_fn)


def num_examples(data: Any) -> int:
    """Examples in the split ``config.data`` describes (all hosts together), for deriving steps.

    ``imagenet_fh`` counts records (instantly for the official 1,281,167-image split when the
    2048/1024 shard names match; otherwise by reading the files).
    """
    return sources.from_config(data).num_examples()


def _element_order(ds: tf.data.Dataset, *, cache: bool, repeat: bool, shuffle: bool,
                   shuffle_buffer: int, seed: int | None) -> tf.data.Dataset:
    """Cached after the first pass, repeated, then shuffled across passes in one buffer."""
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def make_pretrain_dataset(
    data: Any,
    masks: Any,
    *,
    batch_size: int,
    stats: PipelineStats,
    seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    skip_batches: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    prefetch: int = AUTOTUNE,
    threads: int | None = None,
) -> tf.data.Dataset:
    """Per-host batches of two augmented views with masks for DetCon pre-training.

    Args:
      data: ``config.data``: the source (see `source_dataset`) and ``image_size`` (output side
        S), ``shuffle_buffer`` (None: ``10 * batch_size``, as the official code), ``cache``
        (hold the examples in memory after the first pass), ``deterministic`` (fixed element
        order and, with ``seed``, reproducible augmentation).
      masks: ``config.masks`` (``source``, ``grid_size``, ``fh_index``).
      batch_size: per-host batch size (``global_batch // process_count``); partial batches
        are dropped so shapes are static.
      stats: where skipped corrupt images are counted (the caller's own object).
      seed: seed for shuffling and crops (crops use stateless ops keyed per element); None
        draws a fresh stream each run.
      process_index, process_count: this host's shard (see `source_dataset`).
      skip_batches: batches to fast-forward past (resuming a run): the first batch is the one
        an uninterrupted pipeline yields after ``skip_batches`` batches. The examples are
        dropped before the crop/resize, so a fast-forward costs reading and shuffling, not
        pre-processing; it is exact whenever the element order is (``deterministic``).
      shuffle: shuffle files and examples.
      repeat: repeat forever (pre-training); False gives one pass.
      prefetch: batches to prefetch.
      threads: private tf.data thread pool size (default: TF's).

    Returns:
      A dataset of dicts: ``view1``, ``view2`` float32 ``[b, S, S, 3]``; ``mask1``, ``mask2``
      uint8 ``[b, S, S, 1]``; ``label`` int32 ``[b]`` (-1 when unknown).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    image_size, deterministic = data.image_size, data.deterministic
    ds = source_dataset(data, masks, stats=stats, seed=seed or 0, process_index=process_index,
                        process_count=process_count, shuffle_files=shuffle)
    ds = _element_order(ds, cache=data.cache, repeat=repeat, shuffle=shuffle,
                        shuffle_buffer=data.shuffle_buffer or 10 * batch_size, seed=seed)
    # One stateless seed pair per element: reproducible given the element order. (Seeds
    # folded from the element index would save this zip stage but draw other crops than the
    # documented runs.)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))
    if skip_batches:
        # The map below is one-to-one, so skipping whole batches' worth of (example, seed)
        # pairs here yields the same batches as skipping batches after it, minus their work.
        ds = ds.skip(skip_batches * batch_size)

    def preprocess(ex, element_seed):
        views = geometry.two_views(ex["image"], ex["mask"], image_size=image_size,
                                   seed=element_seed, name=ex["name"])
        views["label"] = ex["label"]
        return views

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(prefetch)
    return ds.with_options(dataset_options(deterministic, threads))
