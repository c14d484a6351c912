"""Evaluation builders: labelled images for linear/k-NN evaluation, images with dense labels
for segmentation. One view per image (``geometry.one_view``); evaluation passes keep file
order and pad the last batch (``valid`` marks real examples)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from detcon_jax.data import decode, dense, framing, geometry, segmentation_sets, sources
from detcon_jax.data.options import dataset_options

AUTOTUNE = tf.data.AUTOTUNE


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


def subset_indices(labels: Sequence[int] | None, count: int, *, per_class: int | None = None,
                   max_images: int | None = None) -> np.ndarray:
    """Positions (ascending) of the images a subset keeps, from a listing of ``count`` items.

    ``per_class`` keeps the first N images of every class (file order); ``max_images`` then
    keeps at most N of those, taken round-robin over the classes (the k-th image of every
    class before the (k+1)-th of any), so a small subset stays balanced. Without labels
    (segmentation) ``max_images`` keeps the first N. Both None: everything.
    """
    order = np.arange(count)
    if labels is None:
        return order[:max_images] if max_images is not None else order
    labels = np.asarray(labels)
    rank = np.zeros(count, np.int64)
    for value in np.unique(labels):  # rank of each image within its class
        where = np.flatnonzero(labels == value)
        rank[where] = np.arange(len(where))
    keep = order if per_class is None else order[rank < per_class]
    if max_images is not None and len(keep) > max_images:
        balanced = keep[np.lexsort((labels[keep], rank[keep]))][:max_images]
        keep = np.sort(balanced)
    return keep


def _finish_eval(ds, train, shuffle_buffer, seed):
    """Shuffle + repeat for training; then one stateless seed pair per element, so that a
    single ordered pass with ``crop='random'`` is a reproducible augmented pass."""
    if train:
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
    seeds = tf.data.Dataset.random(seed=seed if seed is not None else (None if train else 0))
    return tf.data.Dataset.zip((ds, seeds.batch(2)))


def global_train_order(count: int, *, local_batch: int, shard: sources.Shard,
                       seed: int) -> tf.data.Dataset:
    """This host's rows of an endless training stream that is the same for any number of
    processes: ``(item index, stream position)`` int64 pairs.

    Epoch ``e`` is a permutation of the ``count`` items keyed by ``(seed, e)``; the epochs
    follow each other, global batch ``g`` is stream positions ``[g B, (g + 1) B)`` with
    ``B = local_batch * shard.count``, and process ``p`` takes its rows ``[p b, (p + 1) b)``
    (``b = local_batch``), the rows `sharding.global_batch` gives its devices. Each host still
    reads and decodes only its own rows.
    """
    if count < 1:
        raise ValueError("global_train_order: no items")
    start = shard.index * local_batch

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order)

    stream = tf.data.Dataset.zip(tf.data.Dataset.range(1 << 62).flat_map(epoch),
                                 tf.data.Dataset.range(1 << 62))
    return (stream.batch(local_batch * shard.count, drop_remainder=True)
            .map(lambda i, pos: (i[start:start + local_batch], pos[start:start + local_batch]))
            .unbatch())


def _batch(ds, batch_size, train, deterministic):
    if train:
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size).map(lambda b: pad_batch(b, batch_size))
    return ds.prefetch(AUTOTUNE).with_options(dataset_options(deterministic or not train, None))


def make_eval_dataset(
    source: str,
    *,
    batch_size: int,
    stats: framing.PipelineStats,
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
    per_class: int | None = None,
    max_images: int | None = None,
) -> tf.data.Dataset:
    """Labelled images for linear evaluation.

    Args:
      source: ``folder`` (``data_dir/split/CLASS/*.jpg|png``, classes in sorted order, e.g.
        the CIFAR-10 layout) or ``tfds`` (``tfds_name`` with ``image`` and ``label``).
      batch_size: per-host batch size.
      stats: where skipped corrupt images are counted (the caller's own object).
      image_size: output side S.
      train: random crop + flip, shuffled and repeated (linear-probe training); otherwise one
        pass in file order with ``crop`` (``center``: the official centre crop with
        ``crop_padding``; ``resize``: the whole image; ``random``: random crop + flip,
        reproducible with ``seed``, e.g. for augmented feature passes) and the last batch
        padded.
      process_index, process_count: this host's shard.
      shuffle_buffer, seed: the training shuffle; ``seed`` also keys the crops.
      deterministic: fixed element order in training mode (evaluation passes always are).
      per_class, max_images: a subset (`subset_indices`), chosen before the host shards. For
        TFDS, the first N per class and then the first ``max_images`` of the stream, counted
        on each host's shard (per host when there are several).

    Returns:
      Dicts of ``image`` float32 ``[b, S, S, 3]`` in [0, 1], ``label`` int32 ``[b]`` and, in
      eval mode, ``valid`` bool ``[b]`` (False on padding).
    """
    shard = sources.Shard(process_index, process_count)
    if source == "folder":
        files, labels, _ = sources.class_folder_files(pathlib.Path(data_dir) / split)
        keep = subset_indices(labels, len(files), per_class=per_class, max_images=max_images)
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        pairs = shard.select(list(zip(files, labels, strict=True)),
                             f"eval folder {data_dir}/{split}")
        paths, labels = zip(*pairs, strict=True)
        ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
        ds = ds.map(lambda p, y: sources.example(tf.io.read_file(p), None, y, p))
        ds = framing.filter_valid(ds, stats)
    elif source == "tfds":
        items, load = sources.TfdsSource(tfds_name, data_dir=data_dir, split=split).listing(
            shard, shuffle_files=train, seed=seed or 0)
        ds = items.map(load)
        if per_class is not None:
            ds = _first_per_class(ds, per_class)
        if max_images is not None:
            ds = ds.take(max_images)
    else:
        raise ValueError(f"eval source must be folder or tfds, got {source!r}")
    ds = _finish_eval(ds, train, shuffle_buffer, seed)
    view_crop = "random" if train else crop

    def preprocess(ex, element_seed):
        image, _ = geometry.one_view(ex["image"], None, image_size=image_size, crop=view_crop,
                                     crop_padding=crop_padding, seed=element_seed,
                                     name=ex["name"])
        return {"image": image, "label": ex["label"]}

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    return _batch(ds, batch_size, train, deterministic)


def _first_per_class(ds: tf.data.Dataset, per_class: int) -> tf.data.Dataset:
    """The first ``per_class`` examples of every label of a stream (counts kept in a scan)."""
    def count(seen, ex):
        label = tf.cast(ex["label"], tf.int32)
        seen = tf.tensor_scatter_nd_add(seen, [[label]], [1])
        return seen, (ex, seen[label] <= per_class)

    # 2**16 label slots: any classification label set (ImageNet-21k has 21,843 classes).
    ds = ds.scan(tf.zeros([1 << 16], tf.int32), count)
    return ds.filter(lambda ex, keep: keep).map(lambda ex, keep: ex)


def make_segmentation_dataset(
    data_dir: str | os.PathLike | None,
    *,
    batch_size: int,
    stats: framing.PipelineStats,
    image_size: int = 224,
    split: str = "train",
    train: bool = False,
    crop: str = "resize",
    ignore_label: int = 255,
    void_ids: Sequence[int] = (),
    layout: str = "folder",
    tfds_name: str | None = None,
    label_map: Sequence[int] | None = None,
    scale_range: Sequence[float] = (0.5, 2.0),
    eval_frame: Sequence[int] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 1000,
    seed: int | None = None,
    deterministic: bool = True,
    max_images: int | None = None,
) -> tf.data.Dataset:
    """Images with dense labels, in one of the `segmentation_sets.LAYOUTS` or from TFDS.

    Labels are decoded by `decode.decode_label_png` (palette indices or grayscale values);
    raw values listed in ``void_ids`` (e.g. CamVid's 11 'Unlabelled') become
    ``ignore_label``, then ``label_map`` (256 entries, raw value -> class id, e.g.
    Cityscapes' labelIds -> train ids) is applied.

    Geometry (``crop``): ``train`` uses the pre-training random crop + flip at S x S, or with
    ``crop='jitter'`` the DeepLab-style random scale in ``scale_range``, S x S crop and flip
    (`dense.scale_jitter_crop`). Evaluation uses ``'resize'`` (whole image squashed to
    S x S, default), ``'center'`` (official centre crop), ``'pad'``: image and label at
    their own resolution, padded to ``eval_frame`` = (H, W) (labels with ``ignore_label``),
    or ``'frame'``: as ``'pad'``, then the image (only) resized to S x S
    (`dense.frame_view`); with ``'pad'`` and ``'frame'`` the metric counts every label pixel
    at native resolution.

    Args:
      data_dir: the layout's root (a local path or a URI); for ``layout='tfds'`` the TFDS
        data dir (None: TFDS's default).
      layout: ``folder`` (``data_dir/split/{images,labels}``, CamVid), ``voc``,
        ``cityscapes`` or ``tfds`` (``tfds_name``, e.g. ``cityscapes/semantic_segmentation``).
      max_images: keep the first N images of the split (file order; TFDS: of this host's
        shard).
      train: for the folder layouts, the stream of `global_train_order` (``shuffle_buffer``
        unused): every global batch, and each image's augmentation, are the same for any
        ``process_count`` (``batch_size`` is this host's share; a corrupt image, dropped and
        counted in ``stats``, shifts only its own host's rows). TFDS: each host shuffles its
        own ``tfds.even_splits`` part.
      Other arguments as in `make_eval_dataset`.

    Returns:
      Dicts of ``image`` float32 ``[b, S, S, 3]`` (``[b, H, W, 3]`` with ``'pad'``),
      ``label`` int32 ``[b, S, S]`` (``[b, H, W]`` with ``'pad'`` and ``'frame'``) and, in
      eval mode, ``valid`` bool ``[b]``.
    """
    shard = sources.Shard(process_index, process_count)
    if layout == "tfds":
        items, load = sources.TfdsSource(tfds_name, data_dir=data_dir, split=split,
                                         gt_masks=True).listing(shard, shuffle_files=train,
                                                                seed=seed or 0)
        if max_images is not None:
            items = items.take(max_images)
        ds = items.map(load)
    else:
        images, labels = segmentation_sets.segmentation_files(layout, data_dir, split)
        keep = subset_indices(None, len(images), max_images=max_images)
        images, labels = [images[i] for i in keep], [labels[i] for i in keep]
        read = sources.file_reader(data_dir)

        def load(p, q):
            return sources.example(read(p), decode.decode_label_png(read(q), q), -1, p)

        if train:
            # One global order (see `global_train_order`): a run's global batches, and each
            # image's augmentation (keyed by its stream position), do not depend on the
            # number of processes.
            files = tf.constant(images), tf.constant(labels)
            seed = seed or 0

            def load_row(i, position):
                ex = load(tf.gather(files[0], i), tf.gather(files[1], i))
                return {**ex, "seed": tf.stack([tf.constant(seed, tf.int64), position])}

            ds = global_train_order(len(images), local_batch=batch_size, shard=shard,
                                    seed=seed).map(load_row)
        else:
            pairs = shard.select(list(zip(images, labels, strict=True)),
                                 f"segmentation {layout} {data_dir} {split}")
            paths, label_paths = zip(*pairs, strict=True)
            ds = tf.data.Dataset.from_tensor_slices((list(paths), list(label_paths))).map(load)
    ds = framing.filter_valid(ds, stats)
    if train and layout != "tfds":
        ds = ds.map(lambda ex: ({k: v for k, v in ex.items() if k != "seed"}, ex["seed"]))
    else:
        ds = _finish_eval(ds, train, shuffle_buffer, seed)
    table = segmentation_sets.label_lookup(label_map)
    table = np.arange(256, dtype=np.uint8) if table is None else table.copy()
    table[[v for v in void_ids if 0 <= v < 256]] = ignore_label
    lookup = tf.constant(table.astype(np.int32))
    view_crop = ("jitter" if crop == "jitter" else "random") if train else crop
    if view_crop in ("pad", "frame") and eval_frame is None:
        raise ValueError(f"segmentation dataset: crop={view_crop!r} needs eval_frame=(H, W)")

    def preprocess(ex, element_seed):
        label = tf.gather(lookup, tf.cast(ex["mask"][..., 0], tf.int32))
        if view_crop == "jitter":
            image, label = dense.scale_jitter_crop(
                ex["image"], label, crop_size=image_size, scale_range=scale_range,
                seed=element_seed, ignore_label=ignore_label)
        elif view_crop == "pad":
            image, label = dense.pad_to_frame(ex["image"], label, eval_frame,
                                              ignore_label=ignore_label, name=ex["name"])
        elif view_crop == "frame":
            image, label = dense.frame_view(ex["image"], label, eval_frame,
                                            image_size=image_size, ignore_label=ignore_label,
                                            name=ex["name"])
        else:
            # Labels ride through as the uint8 mask of one_view (class ids < 256).
            image, label = geometry.one_view(ex["image"], tf.cast(label, tf.uint8)[..., None],
                                             image_size=image_size, crop=view_crop,
                                             crop_padding=32, seed=element_seed,
                                             name=ex["name"])
            label = tf.cast(label[..., 0], tf.int32)
        return {"image": image, "label": label}

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    return _batch(ds, batch_size, train, deterministic)
