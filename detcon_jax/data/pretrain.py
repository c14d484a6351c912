"""The pre-training builder: a source's examples -> two augmented views with masks -> batches.

Stages, in order: the source's examples with their full-resolution masks (`source_dataset`),
the element order (epochs shuffled one by one, then repeated; the resume skip inside the
epoch it falls in, before decoding; one stateless seed pair per element position), the
two-view geometry (``geometry.two_views``), batching and prefetch.
"""

from __future__ import annotations

import random
from typing import Any

import tensorflow as tf

from detcon_jax.data import geometry, mask_sources, sources
from detcon_jax.data.framing import PipelineStats
from detcon_jax.data.options import dataset_options

AUTOTUNE = tf.data.AUTOTUNE


def _source_and_mask_fn(data: Any, masks: Any) -> tuple[type, Any]:
    """The configured source's class and mask function; a bad combination is a ValueError."""
    source_class = sources.source_class(data.source)
    # Learned masks are made on device; the batches carry the bootstrap source's masks.
    source = masks.learned.bootstrap_source if masks.source == "learned" else masks.source
    mask_sources.check_mask_source(source)
    if source == "gt" and not source_class.has_gt_masks:
        raise ValueError(f"mask_source='gt': source {data.source!r} has no ground-truth masks")
    mask_fn = mask_sources.make_mask_fn(
        source, stored_fh=source_class.stored_fh, grid_size=masks.grid_size,
        fh_scale=data.fh_scale, fh_min_size=data.fh_min_size)
    return source_class, mask_fn


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
    source_class, mask_fn = _source_and_mask_fn(data, masks)
    source = source_class.from_config(data, masks)
    return source.dataset(sources.Shard(process_index, process_count),
                          shuffle_files=shuffle_files, seed=seed, stats=stats, mask_fn=mask_fn)


def make_reader(data: Any, masks: Any, *, seed: int, stats: PipelineStats,
                process_index: int = 0, process_count: int = 1,
                shuffle_files: bool = True) -> sources.base.Reader:
    """The configured source's records per epoch and its example stages (see `source_dataset`
    for the arguments)."""
    source_class, mask_fn = _source_and_mask_fn(data, masks)
    return source_class.from_config(data, masks).reader(
        sources.Shard(process_index, process_count), shuffle_files=shuffle_files, seed=seed,
        stats=stats, mask_fn=mask_fn)


def check_source(data: Any, masks: Any = None) -> None:
    """Raises `FileNotFoundError` naming the path and the fix when ``config.data``'s files are
    not laid out as its source expects (e.g. a data-set root instead of its ``train/``)."""
    sources.from_config(data, masks).check()


def num_examples(data: Any) -> int:
    """Examples in the split ``config.data`` describes (all hosts together), for deriving steps.

    ``imagenet_fh`` counts records (instantly for the official 1,281,167-image split when the
    2048/1024 shard names match; otherwise by reading the files).
    """
    return sources.from_config(data).num_examples()


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The int64 seed of epoch ``epoch``'s shuffle (and its elements' crop seeds)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)


def _element_seed(epoch_seed: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The stateless crop seed pair of element ``index`` of an epoch: a function of the
    element's position alone, so a resumed pipeline draws the crops an uninterrupted one does."""
    key = tf.stack([epoch_seed, tf.cast(index, tf.int64)])
    return tf.random.stateless_uniform([2], seed=key, minval=None, maxval=None, dtype=tf.int64)


def _shuffled(ds: tf.data.Dataset, *, shuffle: bool, shuffle_buffer: int,
              epoch_seed: tf.Tensor) -> tf.data.Dataset:
    return ds.shuffle(shuffle_buffer, seed=epoch_seed) if shuffle else ds


def _files_done_before(reader: sources.base.Reader, epoch: tf.Tensor, *, resumed_epoch: int,
                       offset: int, shuffle: bool, shuffle_buffer: int,
                       epoch_seed: tf.Tensor) -> tf.Tensor:
    """Which files of epoch ``epoch`` a resume at position ``offset`` of ``resumed_epoch``
    needs no record of (bool per file; none in the other epochs): those whose records the
    shuffle has all emitted before the position.

    The shuffle's choices depend on nothing but its seed and the number of elements, so
    shuffling the epoch's layout (the file number of each position, known without opening a
    file) the way the pipeline shuffles the records tells which positions it emits first.
    Done inside the pipeline, when the resumed epoch starts.
    """
    counts = tf.constant(reader.file_counts(), tf.int64)
    n = len(reader.file_counts())

    def emitted():
        positions = _shuffled(reader.layout(epoch), shuffle=shuffle,
                              shuffle_buffer=shuffle_buffer, epoch_seed=epoch_seed)
        return positions.take(offset).batch(1 << 16).reduce(
            tf.zeros([n], tf.int64), lambda total, files: total + tf.math.bincount(
                tf.cast(files, tf.int32), minlength=n, maxlength=n, dtype=tf.int64))

    per_file = tf.cond(tf.equal(epoch, resumed_epoch), emitted,
                       lambda: tf.zeros([n], tf.int64))
    return tf.equal(per_file, counts)


def _element_order(reader: sources.base.Reader, *, cache: bool, repeat: bool, shuffle: bool,
                   shuffle_buffer: int, seed: int, skip: int,
                   deterministic: bool = True) -> tf.data.Dataset:
    """(example, crop seed) pairs: each epoch shuffled on its own, then the epochs in turn.

    Epoch ``e`` shuffles its records with a seed of (``seed``, ``e``) (files in an order of
    the same seed), so a resume after ``skip`` elements rebuilds the epoch it falls in and
    drops the records before it there, before they are decoded. In that epoch, files whose
    records all come before the resume position are not opened (with a ``deterministic``
    order, for sources that know their files' record counts: `_files_done_before`). Cached
    examples are decoded once, on the first pass (a resume decodes that pass again to fill
    the cache).
    """
    if not repeat:
        first_epoch, offset, epochs = 0, skip, 1
    else:
        size = reader.epoch_size() if skip else 1
        if size <= 0:
            raise ValueError("the input pipeline's source has no records on this host")
        first_epoch, offset = divmod(skip, size)
        epochs = None
    cached = None
    if cache:
        cached = reader.examples(reader.records(tf.constant(0, tf.int64))).cache()
    # Files are skipped unopened only where the order is fixed: otherwise the interleave may
    # hand a placeholder to a position after the resume.
    skip_files = (cached is None and deterministic and offset > 0
                  and reader.layout is not None)

    def epoch_elements(epoch):
        epoch_seed = _epoch_seed(seed, epoch)
        if cached is not None:
            ds = cached
        elif skip_files:
            ds = reader.records(epoch, _files_done_before(
                reader, epoch, resumed_epoch=first_epoch, offset=offset, shuffle=shuffle,
                shuffle_buffer=shuffle_buffer, epoch_seed=epoch_seed))
        else:
            ds = reader.records(epoch)
        ds = _shuffled(ds, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                       epoch_seed=epoch_seed)
        start = tf.where(epoch == first_epoch, tf.constant(offset, tf.int64), 0)
        ds = ds.skip(start)
        if cached is None:
            ds = reader.examples(ds)
        return ds.enumerate(start=start).map(
            lambda index, ex: (ex, _element_seed(epoch_seed, index)))

    stop = first_epoch + epochs if epochs else 2**62
    return tf.data.Dataset.range(first_epoch, stop).flat_map(epoch_elements)


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
        an uninterrupted pipeline yields after ``skip_batches`` batches. The resume rebuilds
        the epoch that position falls in and drops records there before decoding them, so it
        costs at most one epoch of reading (records per file from the source's counts,
        see `record_index`; files finished before the position are not opened); it is exact
        whenever the element order is (``deterministic``) and no record was dropped as
        corrupt (positions count records).
      shuffle: shuffle files and examples.
      repeat: repeat forever (pre-training); False gives one pass.
      prefetch: batches to prefetch.
      threads: private tf.data thread pool size (default: TF's).

    Returns:
      A dataset of dicts: ``view1``, ``view2`` float32 ``[b, S, S, 3]``; ``mask1``, ``mask2``
      uint8 ``[b, S, S, 1]``; ``label`` int32 ``[b]`` (-1 when unknown). For
      ``masks.source='learned'`` the masks are those of ``masks.learned.bootstrap_source``,
      and the covering window of both views comes too (``cover``, ``cover_box1/2``,
      ``cover_flip1/2``; see ``geometry.two_views``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    image_size, deterministic = data.image_size, data.deterministic
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    reader = make_reader(data, masks, seed=seed, stats=stats, process_index=process_index,
                         process_count=process_count, shuffle_files=shuffle)
    ds = _element_order(reader, cache=data.cache, repeat=repeat, shuffle=shuffle,
                        shuffle_buffer=data.shuffle_buffer or 10 * batch_size, seed=seed,
                        skip=skip_batches * batch_size, deterministic=deterministic)

    cover_size = masks.learned.image_size if masks.source == "learned" else None

    def preprocess(ex, element_seed):
        views = geometry.two_views(ex["image"], ex["mask"], image_size=image_size,
                                   seed=element_seed, name=ex["name"], cover_size=cover_size)
        views["label"] = ex["label"]
        return views

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(prefetch)
    return ds.with_options(dataset_options(deterministic, threads))
