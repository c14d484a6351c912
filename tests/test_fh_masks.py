"""Tests of the Felzenszwalb mask tool: official record layout, masks, resume, round trip."""

import os
import shutil

import numpy as np
import pytest
import skimage.segmentation
import tensorflow as tf
from data_helpers import configs

from detcon_jax import fh_masks
from detcon_jax.data import PipelineStats, pretrain

SETTINGS = [(1000.0, 1000), (300.0, 50)]


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory, data_dir):
    """Runs the tool once (2 worker processes, 2 shards) on 3 CamVid images."""
    root = tmp_path_factory.mktemp("fh")
    src = root / "in" / "images"
    src.mkdir(parents=True)
    files = sorted((data_dir / "camvid" / "val" / "images").glob("*.jpg"))[:3]
    for f in files:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes(files[0].read_bytes()[:2000])
    out = root / "out"
    summary = fh_masks.generate(root / "in", out, settings=SETTINGS, workers=2, num_shards=2,
                                progress=False)
    return root / "in", out, summary, [src / f.name for f in files]


def _records(out):
    ds = pretrain.source_dataset(*configs("imagenet_fh", "fh", path=str(out)),
                                 stats=PipelineStats())
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


def test_masks_equal_skimage_felzenszwalb_mod_256(camvid_run):
    _, out, summary, files = camvid_run
    assert summary.written == 3 and len(summary.shards_written) == 2
    assert len(summary.skipped_images) == 1 and "broken.jpg" in summary.skipped_images[0]
    for path in files:
        image = tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy()
        record = next(r for r in _raw_examples(out) if r["name"] == path.name)
        masks = record["fh"]
        assert masks.shape == (2,) + image.shape[:2]
        for k, (scale, min_size) in enumerate(SETTINGS):
            expected = skimage.segmentation.felzenszwalb(image, scale=scale, min_size=min_size)
            np.testing.assert_array_equal(masks[k], expected % 256)


def _raw_examples(out):
    examples = []
    for f in sorted(out.glob("train-*-of-*")):
        for r in tf.data.TFRecordDataset(str(f)):
            feats = tf.train.Example.FromString(r.numpy()).features.feature
            h = feats["image/height"].int64_list.value[0]
            w = feats["image/width"].int64_list.value[0]
            fh = np.frombuffer(feats[fh_masks.FH_FEATURE].bytes_list.value[0], np.uint8)
            examples.append({
                "name": feats["image/filename"].bytes_list.value[0].decode(),
                "image": feats["image/encoded"].bytes_list.value[0],
                "label": feats["image/class/label"].int64_list.value[0],
                "fh": fh.reshape(-1, h, w)})
    return examples


def test_round_trip_through_the_pipeline_reader(camvid_run):
    _, out, _, files = camvid_run
    raw = {r["name"]: r for r in _raw_examples(out)}
    parsed = _records(out)
    assert len(parsed) == 3
    for ex in parsed:
        name = ex["name"].decode().split(" ")[-1]
        path = next(f for f in files if f.name == name)
        assert ex["image"] == path.read_bytes()  # image bytes kept exactly
        assert ex["label"] == -1  # flat folder: stored 0, read back 0-based
        np.testing.assert_array_equal(ex["mask"][..., 0], raw[name]["fh"][0])
    second = pretrain.source_dataset(*configs("imagenet_fh", "fh", fh_index=1, path=str(out)),
                                     stats=PipelineStats())
    ex = next(iter(second))
    name = ex["name"].numpy().decode().split(" ")[-1]
    np.testing.assert_array_equal(ex["mask"].numpy()[..., 0], raw[name]["fh"][1])


def test_pretrain_dataset_reads_the_records(camvid_run):
    _, out, _, _ = camvid_run
    ds = pretrain.make_pretrain_dataset(*configs("imagenet_fh", "fh", path=str(out),
                                                 image_size=96),
                                        batch_size=2, seed=0, stats=PipelineStats())
    batch = next(iter(ds))
    assert batch["view1"].shape == (2, 96, 96, 3) and batch["mask2"].shape == (2, 96, 96, 1)
    assert pretrain.num_examples(configs("imagenet_fh", path=str(out))[0]) == 3


@pytest.mark.parametrize("cache", [True, False])
def test_cached_pipeline_serves_from_memory_after_one_pass(camvid_run, tmp_path, cache):
    # cache=True holds the parsed records after the first pass (what `bench pipeline --cache`
    # times): no file is read again. Without the cache the next pass re-opens the shards,
    # which are gone.
    copy = tmp_path / "out"
    shutil.copytree(camvid_run[1], copy)
    it = iter(pretrain.make_pretrain_dataset(
        *configs("imagenet_fh", "fh", path=str(copy), image_size=32, shuffle_buffer=3,
                 cache=cache),
        batch_size=3, seed=0, prefetch=1, stats=PipelineStats()))
    next(it)
    next(it)  # 3 records a pass: the first pass has been read
    for shard in copy.glob("train-*"):
        os.remove(shard)
    if cache:
        for _ in range(6):
            batch = next(it)
            assert batch["view1"].shape == (3, 32, 32, 3)
            assert batch["mask1"].numpy().max() > 0  # the stored FH masks, not zeros
    else:
        with pytest.raises(tf.errors.NotFoundError):
            for _ in range(40):  # far more passes than the stages can have read ahead
                next(it)


def test_resume_skips_finished_shards(camvid_run, tmp_path):
    src, out, _, _ = camvid_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    again = fh_masks.generate(src, copy, settings=SETTINGS, workers=0, num_shards=2,
                              progress=False)
    assert again.written == 0 and len(again.shards_resumed) == 2
    first = copy / fh_masks.shard_name("train", 0, 2)
    original = first.read_bytes()
    os.remove(first)
    (copy / ".train-00000-of-00002.tmp123").write_bytes(b"partial")  # an interrupted write
    redo = fh_masks.generate(src, copy, settings=SETTINGS, workers=0, num_shards=2,
                             progress=False)
    assert redo.shards_written == [str(first)] and len(redo.shards_resumed) == 1
    assert first.read_bytes() == original


def test_tfrecord_input_and_cli(camvid_run, tmp_path):
    _, out, _, _ = camvid_run
    summary = fh_masks.main([f"--input={out}", f"--output={tmp_path}", "--scale=1000",
                             "--min_size=1000", "--workers=0", "--no_progress",
                             "--split=validation"])
    assert summary.written == 3
    before = {r["name"]: r for r in _raw_examples(out)}
    for f in sorted(tmp_path.glob("validation-*")):
        for r in tf.data.TFRecordDataset(str(f)):
            feats = tf.train.Example.FromString(r.numpy()).features.feature
            name = feats["image/filename"].bytes_list.value[0].decode()
            assert feats["image/encoded"].bytes_list.value[0] == before[name]["image"]
            fh = np.frombuffer(feats[fh_masks.FH_FEATURE].bytes_list.value[0], np.uint8)
            np.testing.assert_array_equal(fh, before[name]["fh"][0].reshape(-1))


def test_class_folders_labels_and_uint8_overflow(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "in" / cls).mkdir(parents=True)
        noise = rng.integers(0, 256, [40, 40, 3], dtype=np.uint8)
        (tmp_path / "in" / cls / "a.png").write_bytes(tf.io.encode_png(noise).numpy())
    summary = fh_masks.generate(tmp_path / "in", tmp_path / "out", settings=[(1.0, 1)],
                                workers=0, progress=False)
    assert summary.overflow[(1.0, 1)] == 2  # noise gives > 256 segments
    assert "2 image(s) with more than 256 segments" in fh_masks.report(summary)
    examples = _records(tmp_path / "out")
    assert sorted(int(e["label"]) for e in examples) == [0, 1]
    for ex in examples:
        image = tf.io.decode_png(ex["image"], channels=3).numpy()
        full = skimage.segmentation.felzenszwalb(image, scale=1, min_size=1)
        assert full.max() > 255
        np.testing.assert_array_equal(ex["mask"][..., 0], full.astype(np.uint8))


def test_mask_size_mismatch_error_names_the_record(tmp_path):
    image = tf.io.encode_png(np.zeros([20, 30, 3], np.uint8)).numpy()
    bad = fh_masks.make_example(image, np.zeros([1, 20, 29], np.uint8), label=1,
                                filename="odd_one.png", height=20, width=30)
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as writer:
        writer.write(bad)
    ds = pretrain.make_pretrain_dataset(*configs("imagenet_fh", "fh", path=str(tmp_path),
                                                 image_size=32),
                                        batch_size=1, stats=PipelineStats())
    with pytest.raises(tf.errors.InvalidArgumentError, match="odd_one.png"):
        next(iter(ds))


def test_parse_settings():
    assert fh_masks.parse_settings("1000,500", "1000") == [(1000.0, 1000), (500.0, 1000)]
    with pytest.raises(ValueError, match="pair up"):
        fh_masks.parse_settings("1,2,3", "1,2")


def test_imagenet_fh_shards_are_split_across_processes(camvid_run):
    _, out, _, _ = camvid_run
    names = [{ex["name"].numpy() for ex in pretrain.source_dataset(
        *configs("imagenet_fh", "fh", path=str(out)), stats=PipelineStats(), process_index=i,
        process_count=2)} for i in range(2)]
    assert names[0] and names[1] and not names[0] & names[1]
    assert len(names[0] | names[1]) == 3


def test_corrupt_record_image_is_skipped_and_counted(tmp_path):
    good = tf.io.encode_jpeg(np.full([24, 32, 3], 120, np.uint8)).numpy()
    masks = np.zeros([1, 24, 32], np.uint8)
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as writer:
        for name, data in (("ok.jpg", good), ("cut.jpg", good[:-40]), ("ok2.jpg", good)):
            writer.write(fh_masks.make_example(data, masks, label=3, filename=name,
                                               height=24, width=32))
    stats = PipelineStats()
    ds = pretrain.make_pretrain_dataset(*configs("imagenet_fh", path=str(tmp_path),
                                                 image_size=32),
                                        batch_size=1, repeat=False, shuffle=False, stats=stats)
    batches = list(ds)
    assert len(batches) == 2 and all(int(b["label"][0]) == 2 for b in batches)
    assert stats.skipped == 1 and "cut.jpg" in stats.skipped_names[0]


def test_missing_input_is_one_line_and_exit_2(tmp_path):
    # The module's entry point, as a user runs it; TensorFlow's start-up lines stay out.
    import subprocess
    import sys

    from cli_helpers import REPO, subprocess_env

    missing = tmp_path / "nonexistent"
    proc = subprocess.run(
        [sys.executable, "-m", "detcon_jax.fh_masks", f"--input={missing}",
         f"--output={tmp_path / 'out'}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: --input={missing}: no such file or folder (give an image folder, a TFRecord "
        "file, a folder of them or a glob)"], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
