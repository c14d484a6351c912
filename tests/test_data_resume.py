"""Resume of the pre-training pipeline: the batches after a late resume equal the
uninterrupted ones, and the skipped records are not decoded (per-epoch order)."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import configs, take_batches, write_folder

from detcon_jax import fh_masks, record_index
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


def _write_shards(root, sizes=(4, 4, 4), *, index=False):
    """``train-*-of-*`` shards of ``sizes`` records (files named ``s{shard}-im{i}.jpg``),
    with the record-count index fh_masks writes when ``index``."""
    images, ids = sources.synthetic_images(sum(sizes), 40, 48, seed=3)
    entries, i = {}, 0
    for s, size in enumerate(sizes):
        path = root / f"train-{s:05d}-of-{len(sizes):05d}"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for _ in range(size):
                jpeg = tf.io.encode_jpeg(images[i], quality=95).numpy()
                writer.write(fh_masks.make_example(
                    jpeg, ids[i][None], label=i % 5 + 1, filename=f"s{s}-im{i}.jpg", height=40,
                    width=48))
                i += 1
        entries[path.name] = [size, path.stat().st_size]
    if index:
        record_index.write_index(root, "train", entries)
    return sum(sizes)


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


@pytest.mark.slow
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


def _epoch_names(config, epoch, size, offset):
    """Names of the first ``offset`` elements of epoch ``epoch`` (of ``size`` records) of
    the uninterrupted order (seed 7, as the pipelines above)."""
    reader = pretrain.make_reader(*config, seed=7, stats=PipelineStats())
    ds = pretrain._element_order(reader, cache=False, repeat=True, shuffle=True,
                                 shuffle_buffer=config[0].shuffle_buffer, seed=7,
                                 skip=epoch * size)
    return [ex["name"].numpy().decode() for ex, _ in ds.take(offset)]


def _resumed_equals_uninterrupted(config, skip, corrupt):
    """The 3 batches after ``skip`` batches, uninterrupted and resumed after ``corrupt()``
    made the files the resume must not open unreadable."""
    kwargs = dict(batch_size=BATCH, seed=7, prefetch=1)
    full = take_batches(pretrain.make_pretrain_dataset(*config, stats=PipelineStats(),
                                                       **kwargs), skip + 3)
    corrupt()
    stats = PipelineStats()
    resumed = take_batches(pretrain.make_pretrain_dataset(
        *config, skip_batches=skip, stats=stats, **kwargs), 3)
    for x, y in zip(full[skip:], resumed, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.slow
def test_a_resume_does_not_open_shards_the_shuffle_finished_before_its_position(tmp_path):
    # Shards of unequal sizes, interleaved one record at a time: the short ones are done
    # early in the epoch. A resume at offset 14 of epoch 5 must not open a shard all of
    # whose records the shuffle emitted before it; those shards are overwritten with
    # garbage of the same size (the index still matches), so opening one would fail with a
    # corrupt-record error, and a wrong guess would put placeholders in the stream.
    sizes = (1, 2, 10, 11)
    epoch = _write_shards(tmp_path, sizes, index=True)
    config = configs("imagenet_fh", "fh", path=str(tmp_path), image_size=32,
                     shuffle_buffer=3, deterministic=True)
    offset = 14
    seen = _epoch_names(config, 5, epoch, offset)
    done = [s for s, size in enumerate(sizes)
            if sum(f" s{s}-im" in name for name in seen) == size]
    assert done, seen  # the case under test occurs

    def corrupt():
        for s in done:
            path = tmp_path / f"train-{s:05d}-of-{len(sizes):05d}"
            path.write_bytes(b"\xff" * path.stat().st_size)

    _resumed_equals_uninterrupted(config, (5 * epoch + offset) // BATCH, corrupt)


def test_a_folder_resume_opens_no_file_emitted_before_its_position(tmp_path):
    # The folder source's records are file names: the images the resumed epoch emitted
    # before the position are corrupted, so reading one would drop it and shift the stream.
    write_folder(tmp_path, n=10, corrupt=False)
    config = configs("folder", "gt", path=str(tmp_path), image_size=32, shuffle_buffer=4,
                     deterministic=True)
    offset = 4
    seen = _epoch_names(config, 3, 10, offset)
    assert len(seen) == offset

    def corrupt():
        for name in seen:
            with open(name, "wb") as f:
                f.write(b"not an image")

    _resumed_equals_uninterrupted(config, (3 * 10 + offset) // BATCH, corrupt)


def test_shard_counts_come_from_the_index_or_the_framing(tmp_path):
    _write_shards(tmp_path, (3, 5), index=True)
    files = [str(tmp_path / f"train-{s:05d}-of-00002") for s in range(2)]
    assert [record_index.count_from_framing(f) for f in files] == [3, 5]
    index = record_index.read_index(str(tmp_path), "train")
    assert record_index.shard_counts(files, index) == [3, 5]
    # An entry whose size no longer matches its shard is not trusted.
    index[pathlib.Path(files[1]).name] = [99, index[pathlib.Path(files[1]).name][1]]
    assert record_index.shard_counts(files, index) == [3, 99]
    index[pathlib.Path(files[1]).name][1] += 1
    assert record_index.shard_counts(files, index) == [3, 5]
    # A record cut short at the end is not counted.
    data = pathlib.Path(files[1]).read_bytes()
    pathlib.Path(files[1]).write_bytes(data[:-7])
    assert record_index.count_from_framing(files[1]) == 4
    assert record_index.read_index(str(tmp_path / "nowhere"), "train") == {}
