"""Remote paths (``gs://``) against a GCS-protocol server on 127.0.0.1 (tests/gcs_emulator.py).

Checkpoints (orbax: epath + tensorstore), metrics.jsonl, the conversion CLI, an evaluator,
fh_masks, and a bucket that cannot be reached. TensorBoard events go through TensorFlow's
own file systems, whose GCS client cannot be pointed at an emulator: they are tested on
TensorFlow's in-memory ``ram://`` file system.
"""

import io
import json
import os
import pickle
import subprocess
import sys
import uuid

import eval_helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import REPO, subprocess_env
from etils import epath
from gcs_emulator import CLOSED

from detcon_jax import checkpoint, convert, export, fh_masks, interop, metrics, paths
from detcon_jax.config import ConfigError
from detcon_jax.evaluate import features, knn
from tests.test_segmentation_sets import voc  # noqa: F401  (the tiny VOC tree fixture)

PER_CLASS = 2


@pytest.fixture
def bucket_dir(gcs, tmp_path, monkeypatch):
    """A fresh prefix in the emulator's bucket; the test runs in ``tmp_path``.

    The working directory is an empty folder so that the test can check that no local
    ``gs:`` directory appeared (what ``os.path.abspath('gs://...')`` would create).
    """
    monkeypatch.chdir(tmp_path)
    yield f"gs://{gcs.bucket}/{uuid.uuid4().hex[:12]}"
    assert not (tmp_path / "gs:").exists()


def _names(uri: str) -> list[str]:
    return sorted(p.name for p in epath.Path(uri).iterdir())


def test_paths_keep_uris_and_refuse_schemes_epath_cannot_serve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.as_path("gs://b/run/x")) == "gs://b/run/x"
    assert os.fspath(paths.as_path("run")) == str(tmp_path / "run")
    assert paths.tensorboard_dir("gs://b/run") == "gs://b/run/tensorboard"
    assert paths.tensorboard_dir("gs://b/run", "ram://tb") == "ram://tb"
    # epath would read ram://x as the relative local path ./ram:/x.
    with pytest.raises(ConfigError, match="ram://x: unsupported URI scheme"):
        paths.as_path("ram://x")


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _state(value: float) -> dict:
    return {"w": jnp.full((3, 4), value, jnp.float32), "count": jnp.asarray(int(value))}


def _abstract() -> dict:
    return checkpoint.abstract_like(_state(0.0))


def test_checkpoints_save_restore_and_latest_step_in_a_bucket(bucket_dir):
    directory = f"{bucket_dir}/checkpoints"
    saver = checkpoint.Checkpointer(directory, keep=2, signature={"m": 1})
    try:
        for step in (1, 2, 3, 4, 6):
            saver.save(step, _state(step), data_position=10 * step)
        saver.wait()
        assert saver.latest_step() == 6
        state, meta = saver.restore(_abstract())
        np.testing.assert_array_equal(state["w"], np.full((3, 4), 6.0))
        assert meta["data_position"] == 60 and int(state["count"]) == 6
    finally:
        saver.close()
    # Every save and keep=2 happened in the bucket (the trainer owns the cadence).
    assert checkpoint.complete_steps(directory) == [4, 6]
    assert _names(directory) == ["4", "6"]
    assert checkpoint.check_workdir_compatible(directory, {"m": 1}) == 6
    with pytest.raises(ConfigError, match=f"{directory}/6 belongs to another model"):
        checkpoint.check_workdir_compatible(directory, {"m": 2})
    assert checkpoint.check_workdir_compatible(f"{bucket_dir}/none", {"m": 1}) is None


_INTERRUPTED_SAVE = """
import os, signal, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from detcon_jax import checkpoint

saver = checkpoint.Checkpointer(sys.argv[1], keep=3, signature={"m": 1})
saver.save(1, {"w": jnp.full((3, 4), 1.0), "count": jnp.asarray(1)}, data_position=1)
saver.wait()

async def killed(self):
    # Every object of the step is written; the commit file, written last, never is.
    os.kill(os.getpid(), signal.SIGKILL)

atomicity.CommitFileTemporaryPath.finalize = killed
saver.save(2, {"w": jnp.full((3, 4), 2.0), "count": jnp.asarray(2)}, data_position=2)
saver.wait()
"""


@pytest.mark.slow
def test_interrupted_save_in_a_bucket_is_ignored_and_redone(bucket_dir):
    directory = f"{bucket_dir}/checkpoints"
    run = subprocess.run([sys.executable, "-c", _INTERRUPTED_SAVE, directory], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-3000:]
    # Step 2's data reached the bucket, but it is not a complete checkpoint.
    assert (epath.Path(directory) / "2" / "state").is_dir()
    assert checkpoint.complete_steps(directory) == [1]
    state_dir, step = features._resolve_state_dir(bucket_dir, None)
    assert (os.fspath(state_dir), step) == (f"{directory}/1/state", 1)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        features._resolve_state_dir(f"{directory}/2", None)

    saver = checkpoint.Checkpointer(directory, keep=3, signature={"m": 1})
    try:
        assert saver.latest_step() == 1
        state, meta = saver.restore(_abstract())
        np.testing.assert_array_equal(state["w"], np.full((3, 4), 1.0))
        assert meta["step"] == 1
        # The resumed run saves step 2 again over the partial one.
        saver.save(2, _state(2.5), data_position=2)
        saver.wait()
        assert saver.latest_step() == 2
        state, _ = saver.restore(_abstract(), 2)
        np.testing.assert_array_equal(state["w"], np.full((3, 4), 2.5))
    finally:
        saver.close()
    assert checkpoint.complete_steps(directory) == [1, 2]


# ---------------------------------------------------------------------------------------------
# Metrics.


def _steps(text: str) -> list[int]:
    return [json.loads(line)["step"] for line in text.splitlines()]


def test_metrics_jsonl_in_a_bucket_holds_every_step_once_across_a_resume(bucket_dir):
    path = f"{bucket_dir}/metrics.jsonl"
    parts = f"{path}.parts"
    first = metrics.JsonlWriter(path, resume_step=0)
    for step in range(1, 11):
        first.write_scalars(step, {"loss": float(step)})
        if step in (4, 8, 10):  # checkpoints at 4 and 8, a log flush at 10
            first.flush()
    # SIGKILL after step 10: never closed. Each flush uploaded only its own lines; the file
    # itself is not rewritten per flush.
    assert epath.Path(path).read_text() == ""
    assert _names(parts) == ["000000000001.jsonl", "000000000005.jsonl", "000000000009.jsonl"]
    assert _steps(epath.Path(parts, "000000000005.jsonl").read_text()) == [5, 6, 7, 8]
    assert [r["step"] for r in metrics.read_jsonl(path)] == list(range(1, 11))

    second = metrics.JsonlWriter(path, resume_step=8)  # resumed from the step-8 checkpoint
    assert _steps(epath.Path(path).read_text()) == list(range(1, 9))
    assert not epath.Path(parts).exists()
    for step in range(9, 13):
        second.write_scalars(step, {"loss": 100.0 + step})
    second.flush()
    second.close()
    rows = [json.loads(line) for line in epath.Path(path).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["loss"] for r in rows] == [*range(1, 9), *range(109, 113)]
    assert not epath.Path(parts).exists()


def test_train_log_in_a_bucket_keeps_every_run(bucket_dir):
    import logging

    from detcon_jax import console

    logger = logging.getLogger("detcon_jax_test_remote_log")
    logger.setLevel(logging.INFO)
    for text in ("first run", "resumed run"):
        with console.run_log(bucket_dir, is_primary=True):
            logger.info(text)
    lines = epath.Path(bucket_dir, console.LOG_NAME).read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["first run", "resumed run"]


def test_metrics_rewrite_interrupted_before_its_parts_were_deleted(bucket_dir):
    path = f"{bucket_dir}/metrics.jsonl"
    lines = [{"step": s, "loss": float(s)} for s in range(1, 9)]
    epath.Path(path).write_text("".join(json.dumps(x) + "\n" for x in lines))
    epath.Path(f"{path}.parts/000000000005.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines[4:]))
    assert metrics.read_jsonl(path) == lines
    metrics.JsonlWriter(path, resume_step=6).close()
    assert _steps(epath.Path(path).read_text()) == list(range(1, 7))


def test_tensorboard_on_tf_ram_filesystem_beside_a_bucket_workdir(bucket_dir):
    import tensorflow as tf

    tensorboard = f"ram://detcon_tb_{uuid.uuid4().hex[:8]}"
    writer = metrics.create_writer(bucket_dir, is_primary=True, tensorboard_dir=tensorboard)
    writer.write_scalars(1, {"loss": 0.5})
    writer.write_scalars(2, {"loss": 0.25})
    writer.flush()
    writer.close()
    seen = {}
    for events in tf.io.gfile.glob(f"{tensorboard}/*"):
        for event in tf.compat.v1.train.summary_iterator(events):
            for value in event.summary.value:
                seen[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    assert seen == {(1, "loss"): 0.5, (2, "loss"): 0.25}
    assert [r["loss"] for r in metrics.read_jsonl(f"{bucket_dir}/metrics.jsonl")] == [0.5, 0.25]
    assert _names(bucket_dir) == ["metrics.jsonl"]  # no tensorboard/ in the bucket


# ---------------------------------------------------------------------------------------------
# CLIs: convert, an evaluator, fh_masks.


@pytest.fixture(scope="module")
def haiku_npy(tmp_path_factory):
    """A released-layout Haiku ResNet-18 (.npy) with random weights, and its Flax variables."""
    path = eval_helpers.write_haiku_resnet18(tmp_path_factory.mktemp("haiku") / "resnet18.npy")
    _, reference = interop.load_haiku_resnet(path)
    return path, jax.tree.map(np.asarray, reference)


@pytest.fixture(scope="module")
def cifar_subset(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    for split in ("train", "test"):
        for class_dir in sorted((data_dir / "cifar10" / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:PER_CLASS]:
                (root / split / class_dir.name / image.name).symlink_to(image)
    return root


def _assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_convert_and_an_evaluator_read_and_write_a_bucket(bucket_dir, haiku_npy, cifar_subset,
                                                          capsys):
    local_npy, reference = haiku_npy
    npy = f"{bucket_dir}/released/resnet18.npy"
    epath.Path(npy).write_bytes(local_npy.read_bytes())
    imported = f"{bucket_dir}/imported"
    assert convert.main(["haiku-to-orbax", f"--input={npy}", f"--output={imported}"]) == 0
    assert _names(imported) == ["checkpoints", "encoder.json"]
    summary = json.loads(epath.Path(imported, "encoder.json").read_text())
    assert summary["source"] == npy and summary["checkpoint"] == f"{imported}/checkpoints/0"

    backbone, info = features.load_backbone(imported)
    assert info["kind"] == "orbax" and info["step"] == 0
    _assert_trees_equal(jax.tree.map(np.asarray, dict(backbone.variables)), reference)

    assert convert.main(["to-torchvision", f"--input={imported}",
                         f"--output={bucket_dir}/out/r18.npz"]) == 0
    with np.load(io.BytesIO(epath.Path(bucket_dir, "out", "r18.npz").read_bytes())) as npz:
        want = export.flax_to_torchvision(reference)
        assert sorted(npz.files) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(npz[key], value, err_msg=key)
    assert convert.main(["to-detectron2", f"--input={npy}",
                         f"--output={bucket_dir}/out/r18.pkl"]) == 0
    payload = pickle.loads(epath.Path(bucket_dir, "out", "r18.pkl").read_bytes())
    assert len(payload["model"]) == len(export.to_detectron2(reference)["model"])

    capsys.readouterr()
    assert knn.main([f"--checkpoint={imported}", f"--data={cifar_subset}", "--image_size=32",
                     "--batch_size=16", f"--output={bucket_dir}/eval/knn.json"]) == 0
    result = json.loads(epath.Path(bucket_dir, "eval", "knn.json").read_text())
    assert result["backbone"]["kind"] == "orbax" and result["num_test"] == 10 * PER_CLASS
    # No probe object was left behind by the reachability checks.
    assert _names(f"{bucket_dir}/eval") == ["knn.json"]
    assert _names(f"{bucket_dir}/out") == ["r18.npz", "r18.pkl"]


def _images(folder, count: int = 3):
    import tensorflow as tf

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        (folder / f"img{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return folder


def test_fh_masks_writes_its_shards_to_a_bucket(bucket_dir, tmp_path):
    images = _images(tmp_path / "images")
    argv = [f"--input={images}", "--workers=0", "--num_shards=2", "--no_progress",
            "--scale=100", "--min_size=10"]
    local = fh_masks.main([*argv, f"--output={tmp_path / 'local'}"])
    remote = fh_masks.main([*argv, f"--output={bucket_dir}/fh"])
    assert remote.written == local.written == 3
    names = ["train-00000-of-00002", "train-00001-of-00002"]
    # The shards and their record-count index (`record_index`).
    assert _names(f"{bucket_dir}/fh") == [*names, "train.counts.json"]
    for name in [*names, "train.counts.json"]:  # FH is deterministic: the local run's bytes
        assert epath.Path(bucket_dir, "fh", name).read_bytes() == (
            tmp_path / "local" / name).read_bytes()
    again = fh_masks.main([*argv, f"--output={bucket_dir}/fh"])
    assert again.written == 0 and again.shards_resumed == [f"{bucket_dir}/fh/{n}" for n in names]


# ---------------------------------------------------------------------------------------------
# A bucket that cannot be reached: one line, exit status 2, nothing written locally.


def _cli(module: str, *args: str, cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                          env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=300)


def _error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and run.stderr.strip().splitlines()[-1] == errors[0], run.stderr
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("module, args", [
    ("detcon_jax.convert", ["haiku-to-orbax", "--input=x.npy", "--output=URI"]),
    ("detcon_jax.convert", ["to-torchvision", "--input=URI", "--output=x.npz"]),
    ("detcon_jax.evaluate.knn", ["--checkpoint=URI", "--data=DATA"]),
    ("detcon_jax.evaluate.knn", ["--checkpoint=random:tiny", "--data=DATA",
                                 "--output=URI/knn.json"]),
    ("detcon_jax.fh_masks", ["--input=DATA", "--output=URI"]),
    ("detcon_jax.reproduce", ["--camvid=CAMVID", "--cifar10=CIFAR", "--out=URI"]),
])
def test_a_missing_bucket_is_one_line_and_exit_2(gcs, tmp_path, data_dir, cifar_subset, module,
                                                 args):
    uri = "gs://no-such-bucket/run"
    names = {"URI": uri, "DATA": str(cifar_subset / "train"), "CIFAR": str(cifar_subset),
             "CAMVID": str(data_dir / "camvid")}
    for name, value in names.items():
        args = [a.replace(name, value) for a in args]
    line = _error_line(_cli(module, *args, cwd=tmp_path))
    assert "bucket gs://no-such-bucket does not exist" in line, line
    assert os.listdir(tmp_path) == []
    assert not gcs.bucket_exists("no-such-bucket")  # not created by a makedirs either


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_an_unreachable_endpoint_is_one_line_and_exit_2(gcs, tmp_path):
    # Nothing listens on CLOSED; gcsfs retries (about half a minute) before giving up.
    run = _cli("detcon_jax.convert", "haiku-to-orbax", "--input=x.npy",
               f"--output=gs://{gcs.bucket}/run", cwd=tmp_path,
               STORAGE_EMULATOR_HOST=f"http://{CLOSED}", TENSORSTORE_GCS_HTTP_URL=f"http://{CLOSED}")
    line = _error_line(run)
    assert line.startswith(f"error: --output=gs://{gcs.bucket}/run: cannot write to "
                           f"gs://{gcs.bucket}/run (ClientConnectorError"), line
    assert os.listdir(tmp_path) == []


def _upload(local_root, uri: str) -> str:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            epath.Path(uri).joinpath(*path.relative_to(local_root).parts).write_bytes(
                path.read_bytes())
    return uri


def _camvid_like(root):
    """``SPLIT/{images,labels}`` (the CamVid folder layout), ids 0..2 and the void id 3."""
    from tests.test_segmentation_sets import _ids, _image, _label

    labels = {}
    for split in ("train", "test"):
        for k in range(2):
            _image(root / split / "images" / f"{split}{k}.png", 32, 32)
            labels[split, k] = _ids(32, 32, [0, 1, 2, 3])
            _label(root / split / "labels" / f"{split}{k}.png", labels[split, k])
    return root, labels


@pytest.mark.slow  # ~16 s: three layouts and a probe CLI run against the emulator
def test_segmentation_layouts_read_from_a_bucket(bucket_dir, voc, tmp_path):  # noqa: F811
    """VOC, Cityscapes and the CamVid folder layout listed and read from ``gs://``: the same
    files in the same order and the same batches as from the local copy; the CamVid probe
    CLI scores every label pixel of its bucket copy."""
    from detcon_jax import data
    from detcon_jax.data import segmentation_sets
    from detcon_jax.evaluate import segmentation
    from tests.test_segmentation_sets import _ids, write_cityscapes

    voc_root, _ = voc
    city_root = write_cityscapes(tmp_path / "cityscapes", {"val": 2},
                                 _ids(16, 32, [0, 7, 26, 33]))
    camvid_root, camvid_labels = _camvid_like(tmp_path / "camvid")
    city = segmentation_sets.CITYSCAPES
    cases = [("voc", voc_root, "val", {"eval_frame": (48, 48)}),
             ("cityscapes", city_root, "val", {"eval_frame": (16, 32),
                                               "label_map": city.label_map}),
             ("folder", camvid_root, "test", {"eval_frame": (32, 32)})]
    for layout, root, split, kwargs in cases:
        uri = _upload(root, f"{bucket_dir}/{layout}")
        local = segmentation_sets.segmentation_files(layout, root, split)
        remote = segmentation_sets.segmentation_files(layout, uri, split)
        assert remote == tuple([p.replace(str(root), uri) for p in files] for files in local)

        def batches(where, layout=layout, split=split, kwargs=kwargs):
            return list(data.make_segmentation_dataset(
                where, layout=layout, split=split, batch_size=2, crop="pad",
                stats=data.PipelineStats(), **kwargs).as_numpy_iterator())

        for got, want in zip(batches(uri), batches(root), strict=True):
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{layout} {key}")

    out = tmp_path / "probe.json"
    assert segmentation.main(["--mode=probe", "--checkpoint=random:tiny",
                              f"--data={bucket_dir}/folder", "--num_classes=3",
                              "--void_ids=3", "--image_size=32", "--batch_size=2",
                              "--epochs=1", f"--output={out}"]) == 0
    result = json.loads(out.read_text())
    truth = np.concatenate([camvid_labels["test", k].ravel() for k in range(2)])
    np.testing.assert_array_equal(np.asarray(result["confusion_matrix"]).sum(axis=1),
                                  np.bincount(truth[truth != 3], minlength=3))
