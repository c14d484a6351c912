"""Input-side throughput: the tf.data pre-training pipeline and Felzenszwalb mask generation.

Usage::

  python -m detcon_jax.bench_input pipeline [--batch_size=32] [--image_size=224]
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


def bench_pipeline(*, batch_size: int = 32, image_size: int = 224, num_batches: int = 20,
                   warmup_batches: int = 3) -> dict:
    """Images/s of ``make_pretrain_dataset('imagenet_fh')`` (two views + masks) on this host."""
    from detcon_jax import input_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        src = _write_folder(pathlib.Path(tmp) / "src")
        fh_masks.generate(src, pathlib.Path(tmp) / "records", workers=0, progress=False)
        ds = input_pipeline.make_pretrain_dataset(
            "imagenet_fh", data_dir=pathlib.Path(tmp) / "records", batch_size=batch_size,
            image_size=image_size, mask_source="fh", shuffle_buffer=64, seed=0)
        it = iter(ds)
        for _ in range(warmup_batches):
            next(it)
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(it)
        _ = batch["view1"].numpy()
        elapsed = time.perf_counter() - start
    return {"name": "input_pipeline", "img_per_s": num_batches * batch_size / elapsed,
            "batch_size": batch_size, "image_size": image_size,
            "image_shape": list(BENCH_SHAPE), "cpu_count": os.cpu_count()}


def bench_fh(*, workers: int = 1, repeats: int = 2) -> dict:
    """Images/s of decode + Felzenszwalb (1000, 1000): in this process (``workers=1``) or
    through the multi-process tool (``workers>1``, process start-up included)."""
    images = bench_images()
    settings = [(1000.0, 1000)]
    if workers <= 1:
        items = [fh_masks.Item(name=n, record=fh_masks.make_example(
            d, None, label=0, filename=n, height=BENCH_SHAPE[0], width=BENCH_SHAPE[1]))
            for n, d in images]
        fh_masks.process_item(items[0], settings)  # warm-up (imports, first decode)
        start = time.perf_counter()
        for _ in range(repeats):
            for item in items:
                fh_masks.process_item(item, settings)
        elapsed = time.perf_counter() - start
        count = repeats * len(items)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            src = pathlib.Path(tmp) / "src"
            (src / "images").mkdir(parents=True)
            for r in range(repeats * workers):
                for n, d in images:
                    (src / "images" / f"{r}_{n}").write_bytes(d)
            start = time.perf_counter()
            summary = fh_masks.generate(src, pathlib.Path(tmp) / "out", workers=workers,
                                        progress=False)
            elapsed = time.perf_counter() - start
            count = summary.written
    return {"name": "fh_masks", "img_per_s": count / elapsed, "workers": workers,
            "image_shape": list(BENCH_SHAPE), "cpu_count": os.cpu_count(),
            "scale": 1000, "min_size": 1000}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.bench_input",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("pipeline", "fh"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "pipeline":
        result = bench_pipeline(batch_size=args.batch_size, image_size=args.image_size,
                                num_batches=args.num_batches)
    else:
        result = bench_fh(workers=args.workers)
    result = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
