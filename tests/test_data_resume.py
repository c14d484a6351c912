"""Resume of the pre-training pipeline: the batches after a late resume equal the
uninterrupted ones, and the skipped records are not decoded (per-epoch order)."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import configs, take_batches, write_folder

from detcon_jax import fh_masks
from detcon_jax.data import PipelineStats, pretrain, sources

BATCH = 2


class _CountingMasks:
    """Wraps ``mask_sources.make_mask_fn`` so that each example given a mask (decoded or
    parsed: every record past the skip) is counted."""

    def __init__(self, make_mask_fn):
        self.count, self._make = 0, make_mask_fn

    def _add(self):
        self.count += 1
        return np.int64(0)

    def __call__(self, *args, **kwargs):
        mask_fn = self._make(*args, **kwargs)

        def counted(ex):
            tick = tf.numpy_function(self._add, [], tf.int64, stateful=True)
            with tf.control_dependencies([tick]):
                ex = dict(ex)
                ex["label"] = tf.identity(ex["label"])
            return mask_fn(ex)

        return counted


def _write_shards(root, shards=3, per_shard=4):
    images, ids = sources.synthetic_images(shards * per_shard, 40, 48, seed=3)
    for s in range(shards):
        path = root / f"train-{s:05d}-of-{shards:05d}"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(s * per_shard, (s + 1) * per_shard):
                jpeg = tf.io.encode_jpeg(images[i], quality=95).numpy()
                writer.write(fh_masks.make_example(
                    jpeg, ids[i][None], label=i % 5 + 1, filename=f"im{i}.jpg", height=40,
                    width=48))
    return shards * per_shard


def _config(kind, tmp_path):
    if kind == "imagenet_fh":
        n = _write_shards(tmp_path)
        return configs("imagenet_fh", "fh", path=str(tmp_path), image_size=32,
                       shuffle_buffer=5, deterministic=True), n
    if kind == "folder":
        write_folder(tmp_path, n=6, corrupt=False)
        return configs("folder", "gt", path=str(tmp_path), image_size=32, shuffle_buffer=4,
                       deterministic=True), 6
    return configs("synthetic", "gt", image_size=32, synthetic_num_images=6,
                   shuffle_buffer=4, deterministic=True), 6


@pytest.mark.parametrize("kind", ["imagenet_fh", "folder", "synthetic"])
def test_late_resume_equals_uninterrupted_and_decodes_at_most_one_epoch(
        kind, tmp_path, monkeypatch):
    config, epoch = _config(kind, tmp_path)
    kwargs = dict(batch_size=BATCH, seed=7, stats=PipelineStats(), prefetch=1)
    skip = 5 * epoch // BATCH + 1  # late: inside the sixth epoch
    full = take_batches(pretrain.make_pretrain_dataset(*config, **kwargs), skip + 3)

    counter = _CountingMasks(pretrain.mask_sources.make_mask_fn)
    monkeypatch.setattr(pretrain.mask_sources, "make_mask_fn", counter)
    it = iter(pretrain.make_pretrain_dataset(*config, skip_batches=skip, **kwargs))
    resumed = [{k: v.numpy() for k, v in next(it).items()}]
    # Replaying the stream would have decoded all 5 * epoch + BATCH earlier records first;
    # the per-epoch order decodes only the records of the epoch the resume falls in (plus
    # what the stages read ahead).
    assert 0 < counter.count < 2 * epoch + 2 * BATCH, counter.count
    resumed += [{k: v.numpy() for k, v in next(it).items()} for _ in range(2)]
    for x, y in zip(full[skip:], resumed, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_epochs_are_shuffled_one_by_one():
    # Each epoch is a permutation of the examples (shuffle within an epoch, then repeat), and
    # the epochs differ in order.
    config = configs("synthetic", "gt", image_size=32, synthetic_num_images=6,
                     shuffle_buffer=6, deterministic=True)
    names = []
    ds = pretrain._element_order(
        pretrain.make_reader(*config, seed=1, stats=PipelineStats()), cache=False, repeat=True,
        shuffle=True, shuffle_buffer=6, seed=1, skip=0)
    for ex, _ in ds.take(18):
        names.append(ex["name"].numpy())
    epochs = [names[i:i + 6] for i in range(0, 18, 6)]
    for e in epochs:
        assert sorted(e) == sorted(epochs[0])
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_every_shipped_config_has_a_reproducible_order():
    # Exact resume needs a fixed element order; the arms of the COCO/CamVid configs too.
    import pathlib

    from detcon_jax.configs import loading

    root = pathlib.Path(__file__).resolve().parents[1] / "experiments"
    specs = [str(p) for p in sorted(root.glob("*.py"))]
    specs += [f"{root / 'detcon_b_coco.py'}:{arm}" for arm in ("fh", "fh_online", "gt")]
    for spec in specs:
        config = loading.load(spec)
        assert config.data.deterministic, spec
