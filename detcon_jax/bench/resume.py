"""``bench resume``: time from start to the first batch when resuming early and late.

The per-epoch element order lets a resume rebuild the epoch its position falls in and drop
the records before the position undecoded, so the time to the first batch should not grow
with the epoch (``resume_ratio`` = late over epoch 0, goal <= 1.2).
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import tensorflow as tf

from detcon_jax import fh_masks, record_index
from detcon_jax.bench.common import host_info, log
from detcon_jax.data import sources


def _write_shards(root: pathlib.Path, num_shards: int, per_shard: int,
                  shape: tuple[int, int], *, with_index: bool) -> None:
    """``train-*-of-*`` ImageNet-FH shards of generated images with their id maps as FH, and
    the record-count index ``fh_masks`` writes beside them when ``with_index``."""
    images, ids = sources.synthetic_images(num_shards * per_shard, *shape, seed=0)
    index = {}
    for s in range(num_shards):
        path = root / fh_masks.shard_name("train", s, num_shards)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(s * per_shard, (s + 1) * per_shard):
                writer.write(fh_masks.make_example(
                    tf.io.encode_jpeg(images[i], quality=90).numpy(), ids[i][None],
                    label=1, filename=f"gen{i}.jpg", height=shape[0], width=shape[1]))
        index[path.name] = [per_shard, path.stat().st_size]
    if with_index:
        record_index.write_index(root, "train", index)


def _time_to_first_batch(records: pathlib.Path, *, skip_batches: int, batch_size: int,
                         image_size: int) -> float:
    from ml_collections import ConfigDict

    from detcon_jax import data

    pipeline = ConfigDict(dict(
        source="imagenet_fh", path=str(records), split="train", image_size=image_size,
        shuffle_buffer=10 * batch_size, cache=False, deterministic=True, fh_scale=1000.0,
        fh_min_size=1000))
    masks = ConfigDict(dict(source="fh", grid_size=4, fh_index=0))
    start = time.perf_counter()
    ds = data.make_pretrain_dataset(pipeline, masks, batch_size=batch_size,
                                    stats=data.PipelineStats(), seed=0,
                                    skip_batches=skip_batches)
    next(iter(ds))
    return time.perf_counter() - start


def bench_resume(*, num_shards: int = 8, per_shard: int = 64, batch_size: int = 32,
                 image_size: int = 128, late_epoch: int = 100, repeats: int = 3,
                 with_index: bool = True) -> dict:
    """Seconds to the first batch after resuming at epoch 0 and mid-way through epoch
    ``late_epoch`` (median of ``repeats``, and each repeat's), on generated multi-shard
    ImageNet-FH records; ``with_index``: with ``fh_masks``'s record-count index beside the
    shards (else counted from their framing)."""
    epoch = num_shards * per_shard
    late = (late_epoch * epoch + epoch // 2) // batch_size
    log(f"resume: {num_shards} shards x {per_shard} records, batch {batch_size}, "
        f"{image_size}px; epoch 0 vs batch {late} (epoch {late_epoch})")
    with tempfile.TemporaryDirectory() as tmp:
        records = pathlib.Path(tmp)
        _write_shards(records, num_shards, per_shard, (160, 192), with_index=with_index)
        _time_to_first_batch(records, skip_batches=0, batch_size=batch_size,
                             image_size=image_size)  # warm-up: graph building, file cache
        times = {"epoch0_s": [], "late_s": []}
        for _ in range(repeats):
            for key, skip in (("epoch0_s", 0), ("late_s", late)):
                times[key].append(_time_to_first_batch(
                    records, skip_batches=skip, batch_size=batch_size, image_size=image_size))
    first, last = (sorted(times[k])[len(times[k]) // 2] for k in ("epoch0_s", "late_s"))
    return {"name": "resume", "resume_ratio": last / first, "epoch0_s": first, "late_s": last,
            "epoch0_all_s": times["epoch0_s"], "late_all_s": times["late_s"],
            "with_index": with_index, "late_epoch": late_epoch, "records_per_epoch": epoch,
            "num_shards": num_shards,
            "batch_size": batch_size, "image_size": image_size, **host_info()}
