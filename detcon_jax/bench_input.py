"""Input-side throughput: the tf.data pre-training pipeline and Felzenszwalb mask generation.

Usage::

  python -m detcon_jax.bench_input pipeline [--batch_size=32] [--image_size=224] [--cache]
  python -m detcon_jax.bench_input fh [--workers=1]

Each prints one JSON line with ``img_per_s``. The images are scikit-image's bundled colour
photos, resized to ImageNet's typical 375 x 500 and JPEG-encoded, so nothing is downloaded.
``pipeline`` reads them from TFRecords in the official ImageNet-FH layout (written to a
temporary folder first) and measures decode + two views + masks + batching; ``fh`` measures
decode + Felzenszwalb (scale 1000, min_size 1000) per image.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

from detcon_jax import fh_masks

BENCH_SHAPE = (375, 500)  # typical ImageNet image


def bench_images(shape: tuple[int, int] = BENCH_SHAPE) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of scikit-image's colour photos resized to ``shape``."""
    import skimage
    import tensorflow as tf

    from detcon_jax import input_pipeline

    out = []
    for name in input_pipeline.SKIMAGE_PHOTOS:
        path = pathlib.Path(skimage.data_dir) / name
        if not path.is_file():
            continue
        image = input_pipeline.decode_image(path.read_bytes())
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
                   cache: bool = False) -> dict:
    """Images/s of ``make_pretrain_dataset('imagenet_fh')`` (two views + masks) on this host.

    Also ``cpu_ms_per_img``: CPU time of this process (all threads) per image, which depends
    much less than wall time on other jobs sharing the cores. Warm-up batches fill the
    prefetch buffers first, so the timed batches are produced while timed.

    ``cache=True`` is passed to the pipeline: the parsed records are held in memory after the
    first pass (the warm-up covers it), so the timed batches measure the two-view
    pre-processing (decode, crops, resizes, masks) and batching alone, without file reads and
    record parsing. Comparing both numbers tells whether a host is bound by its storage and
    parsing or by the pre-processing.
    """
    from detcon_jax import input_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        src = _write_folder(pathlib.Path(tmp) / "src")
        fh_masks.generate(src, pathlib.Path(tmp) / "records", workers=0, progress=False)
        ds = input_pipeline.make_pretrain_dataset(
            "imagenet_fh", data_dir=pathlib.Path(tmp) / "records", batch_size=batch_size,
            image_size=image_size, mask_source="fh", shuffle_buffer=10 * batch_size, seed=0,
            threads=threads, cache=cache)
        it = ds.as_numpy_iterator()
        for _ in range(warmup_batches):
            next(it)
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(num_batches):
            next(it)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = num_batches * batch_size
    return {"name": "input_pipeline", "img_per_s": count / elapsed,
            "cpu_ms_per_img": 1e3 * cpu / count, "batch_size": batch_size,
            "image_size": image_size, "image_shape": list(BENCH_SHAPE), "cache": cache,
            "cpu_count": os.cpu_count()}


def bench_fh(*, workers: int = 1, repeats: int = 2) -> dict:
    """Images/s of decode + Felzenszwalb (1000, 1000) + record serialisation
    (``fh_masks.process_item``, the path ``fh_masks.generate`` runs per image).

    ``workers=1``: in this process. ``workers>1``: through the tool's process pool
    (``fh_masks.make_pool``), timed at steady state after every worker has started and
    processed one image; ``startup_s`` is the pool's start-up (process spawn, imports)."""
    images = bench_images()
    settings = [(1000.0, 1000)]
    items = [fh_masks.Item(name=n, record=fh_masks.make_example(
        d, None, label=0, filename=n, height=BENCH_SHAPE[0], width=BENCH_SHAPE[1]))
        for n, d in images]
    result = {"name": "fh_masks", "workers": workers, "image_shape": list(BENCH_SHAPE),
              "cpu_count": os.cpu_count(), "scale": 1000, "min_size": 1000}
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
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.bench_input",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("pipeline", "fh"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_batches", type=int, default=50)
    parser.add_argument("--cache", action="store_true",
                        help="pipeline: parsed records held in memory (pre-processing alone)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="fh: passes over the images")
    args = parser.parse_args(argv)
    if args.what == "pipeline":
        result = bench_pipeline(batch_size=args.batch_size, image_size=args.image_size,
                                num_batches=args.num_batches, cache=args.cache)
    else:
        result = bench_fh(workers=args.workers, repeats=args.repeats)
    result = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
