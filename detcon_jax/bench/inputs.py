"""Input-side throughput: the tf.data pre-training pipeline and Felzenszwalb mask generation.

The images are scikit-image's bundled colour photos, resized to ImageNet's typical 375 x 500
and JPEG-encoded, so nothing is downloaded. ``pipeline`` reads them from TFRecords in the
official ImageNet-FH layout (written to a temporary folder first) and measures decode + two
views + masks + batching; ``fh`` measures decode + Felzenszwalb (scale 1000, min_size 1000)
per image. ``data_dir`` measures your own data instead: ImageNet-FH shards (``pipeline``) or
an image folder (``fh``).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

from detcon_jax import fh_masks
from detcon_jax.bench.common import host_info, log, peak_rss_mb

BENCH_SHAPE = (375, 500)  # typical ImageNet image


def bench_images(shape: tuple[int, int] = BENCH_SHAPE) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of scikit-image's colour photos resized to ``shape``."""
    import skimage
    import tensorflow as tf

    from detcon_jax import data

    out = []
    for name in data.SKIMAGE_PHOTOS:
        path = pathlib.Path(skimage.data_dir) / name
        if not path.is_file():
            continue
        image = data.decode_image(path.read_bytes())
        image = tf.image.resize(image, shape, antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        out.append((pathlib.Path(name).stem + ".jpg", tf.io.encode_jpeg(image, quality=90)
                    .numpy()))
    return out


def _write_folder(directory: pathlib.Path) -> pathlib.Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    for name, data in bench_images():
        (directory / "images" / name).write_bytes(data)
    return directory


def bench_pipeline(*, batch_size: int = 32, image_size: int = 224, num_batches: int = 50,
                   warmup_batches: int = 10, threads: int | None = None,
                   cache: bool = False, data_dir: str | os.PathLike | None = None,
                   split: str = "train", deterministic: bool = False) -> dict:
    """Images/s of ``make_pretrain_dataset('imagenet_fh')`` (two views + masks) on this host.

    Also ``cpu_ms_per_img``: CPU time of this process (all threads) per image, which depends
    much less than wall time on other jobs sharing the cores. Warm-up batches fill the
    prefetch buffers first, so the timed batches are produced while timed.

    ``cache=True`` is passed to the pipeline: the parsed records are held in memory after the
    first pass (the warm-up covers it), so the timed batches measure the two-view
    pre-processing (decode, crops, resizes, masks) and batching alone, without file reads and
    record parsing. Comparing both numbers tells whether a host is bound by its storage and
    parsing or by the pre-processing.

    ``data_dir``: read these ImageNet-FH shards (``{split}-*-of-*``, e.g. written by
    ``python -m detcon_jax.fh_masks``) instead of generating the bundled photos' records.
    """
    log(f"pipeline: {image_size}px, batch {batch_size}, {num_batches} batches"
        + (", parsed records cached in memory" if cache else "")
        + (f", shards {data_dir}/{split}-*" if data_dir else ""))
    with tempfile.TemporaryDirectory() as tmp:
        records = data_dir
        if records is None:
            records = pathlib.Path(tmp) / "records"
            fh_masks.generate(_write_folder(pathlib.Path(tmp) / "src"), records, split=split,
                              workers=0, progress=False)
        elapsed, cpu = _time_pipeline(records, split, batch_size, image_size, num_batches,
                                      warmup_batches, threads, cache, deterministic)
    count = num_batches * batch_size
    result = {"name": "input_pipeline", "img_per_s": count / elapsed,
              "cpu_ms_per_img": 1e3 * cpu / count, "batch_size": batch_size,
              "image_size": image_size, "cache": cache,
              "deterministic": deterministic}
    if data_dir is None:
        result["image_shape"] = list(BENCH_SHAPE)
    else:
        result.update(data_dir=str(data_dir), split=split)
    return {**result, "peak_rss_mb": peak_rss_mb(), **host_info()}


def _time_pipeline(records, split, batch_size, image_size, num_batches, warmup_batches,
                   threads, cache, deterministic) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``num_batches`` after ``warmup_batches``."""
    from ml_collections import ConfigDict

    from detcon_jax import data

    pipeline = ConfigDict(dict(
        source="imagenet_fh", path=str(records), split=split, image_size=image_size,
        shuffle_buffer=10 * batch_size, cache=cache, deterministic=deterministic, fh_scale=1000.0,
        fh_min_size=1000))
    masks = ConfigDict(dict(source="fh", grid_size=4, fh_index=0))
    ds = data.make_pretrain_dataset(pipeline, masks, batch_size=batch_size,
                                    stats=data.PipelineStats(), seed=0, threads=threads)
    it = ds.as_numpy_iterator()
    for _ in range(warmup_batches):
        next(it)
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return time.perf_counter() - start, time.process_time() - cpu


def bench_fh(*, workers: int = 1, repeats: int = 2, data_dir: str | os.PathLike | None = None,
             max_images: int = 20) -> dict:
    """Images/s of decode + Felzenszwalb (1000, 1000) + record serialisation
    (``fh_masks.process_item``, the path ``fh_masks.generate`` runs per image).

    ``workers=1``: in this process. ``workers>1``: through the tool's process pool
    (``fh_masks.make_pool``), timed at steady state after every worker has started and
    processed one image; ``startup_s`` is the pool's start-up (process spawn, imports).

    ``data_dir``: the first ``max_images`` images of this folder (flat, ``images/`` or class
    sub-folders, as ``fh_masks`` reads it) instead of the bundled photos.
    """
    what = f"up to {max_images} images of {data_dir}" if data_dir else "the bundled photos"
    log(f"fh: {workers} worker(s), {repeats} pass(es) over {what}")
    settings = [(1000.0, 1000)]
    result = {"name": "fh_masks", "workers": workers, "scale": 1000, "min_size": 1000}
    if data_dir is None:
        items = [fh_masks.Item(name=n, record=fh_masks.make_example(
            d, None, label=0, filename=n, height=BENCH_SHAPE[0], width=BENCH_SHAPE[1]))
            for n, d in bench_images()]
        result["image_shape"] = list(BENCH_SHAPE)
    else:
        if not pathlib.Path(data_dir).is_dir():
            raise FileNotFoundError(f"bench fh: --data_dir {data_dir} is not a directory")
        items = fh_masks.list_image_files(data_dir)[:max_images]
        if not items:
            raise FileNotFoundError(f"bench fh: no images ({', '.join(fh_masks.IMAGE_EXTENSIONS)}) "
                                    f"in {data_dir}")
        result["data_dir"] = str(data_dir)
    if workers <= 1:
        fh_masks.process_item(items[0], settings)  # warm-up (imports, first decode)
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(repeats):
            for item in items:
                fh_masks.process_item(item, settings)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        count = repeats * len(items)
        result["cpu_ms_per_img"] = 1e3 * cpu / count
    else:
        start = time.perf_counter()
        pool = fh_masks.make_pool(workers, settings)
        try:
            # One image per worker (chunksize 1 hands them out one by one) starts them all.
            list(pool.imap_unordered(fh_masks.process_item, items[:1] * workers, chunksize=1))
            result["startup_s"] = time.perf_counter() - start
            work = [item for _ in range(repeats * workers) for item in items]
            start = time.perf_counter()
            for _ in pool.imap_unordered(fh_masks.process_item, work, chunksize=1):
                pass
            elapsed, count = time.perf_counter() - start, len(work)
        finally:
            pool.close()
            pool.join()
    result.update(img_per_s=count / elapsed, images=count)
    return {**result, "peak_rss_mb": peak_rss_mb(), **host_info()}
