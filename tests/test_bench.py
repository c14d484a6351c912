"""Smoke runs of ``python -m detcon_jax.bench``: each benchmark once at a tiny size.

Not timed tests: they check that every benchmark runs end to end and prints one JSON line
with the documented keys holding positive, finite numbers.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from tolerances import f32_tolerance

from detcon_jax import bench, fh_masks


# Generous: the smoke runs must not fail because a shared CI machine is busy.
def _run(repo_root, *args, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/jaxcache")
    proc = subprocess.run(
        [sys.executable, "-m", "detcon_jax.bench", *args, "--compilation_cache"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # one JSON line per measurement, nothing else
    return json.loads(lines[0])


def _assert_positive(result, *keys):
    for key in keys:
        assert key in result, f"missing {key!r} in {result}"
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (
            key, value)


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
def test_step_smoke_on_two_devices(repo_root):
    # Two fake devices: the batch is sharded and BatchNorm/negatives span both, as in train.py.
    result = _run(repo_root, "step", "--devices=2", "--model=tiny", "--image_size=32",
                  "--batch_size=4",
                  "--mlp_hidden_size=32", "--projection_size=16", "--num_classes=10",
                  "--num_masks=4", "--repeats=2")
    _assert_positive(result, "img_per_s", "compile_s", "peak_rss_mb", "step_s", "num_devices")
    assert result["name"] == "train_step" and result["model"] == "tiny"
    assert result["batch_size"] == 4 and result["image_size"] == 32
    assert math.isfinite(result["first_loss"])
    assert result["platform"] == "cpu" and result["num_devices"] == 2
    assert "load_avg_1m" in result


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
def test_loss_smoke_on_two_devices(repo_root):
    # --devices=2 re-executes with two fake CPU devices; --compare_direct also runs the
    # direct port, whose value and gradients the lean loss must match.
    result = _run(repo_root, "loss", "--batch_per_device=4", "--devices=2", "--num_masks=4",
                  "--dim=16", "--repeats=2", "--compare_direct")
    _assert_positive(result, "seconds", "temp_bytes", "direct_temp_bytes", "memory_ratio",
                     "direct_seconds")
    assert result["num_devices"] == 2 and result["global_batch"] == 8
    assert result["memory_ratio"] == pytest.approx(
        result["temp_bytes"] / result["direct_temp_bytes"], rel=1e-3)
    # float32 rounding of two summation orders (tests/tolerances.py): each logit is a 16-term
    # dot product and each row's log-sum-exp runs over the 8 x 4 = 32 global masks (n = 512),
    # then a mean; a gradient entry of the mean loss is at most ~ (1 / temperature) / (B R)
    # = 10 / 32.
    assert result["abs_diff"] <= f32_tolerance(32 * 16, depth=2, magnitude=abs(result["loss"]))
    assert result["grad_max_abs_diff"] <= f32_tolerance(32 * 16, depth=3, magnitude=10 / 32)


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
@pytest.mark.parametrize("cache", [False, True])
def test_pipeline_smoke(repo_root, cache):
    result = _run(repo_root, "pipeline", "--image_size=32", "--batch_size=4",
                  "--num_batches=2", *(["--cache"] if cache else []))
    _assert_positive(result, "img_per_s", "peak_rss_mb", "cpu_ms_per_img")
    assert result["image_size"] == 32 and result["batch_size"] == 4
    assert result["cache"] is cache


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
def test_resume_smoke(repo_root):
    result = _run(repo_root, "resume", "--late_epoch=3", "--num_shards=2", "--per_shard=4",
                  "--batch_size=2", "--image_size=32", "--repeats=1")
    _assert_positive(result, "resume_ratio", "epoch0_s", "late_s")
    assert result["late_epoch"] == 3 and result["records_per_epoch"] == 8
    assert result["resume_ratio"] == pytest.approx(result["late_s"] / result["epoch0_s"],
                                                   rel=1e-2)


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
def test_pipeline_and_fh_on_the_users_data(repo_root, data_dir, tmp_path):
    # --data_dir: the user's own image folder (fh) and FH shards written from it (pipeline).
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((data_dir / "camvid" / "val" / "images").glob("*.jpg"))[:2]:
        shutil.copy(f, images / f.name)
    fh = _run(repo_root, "fh", f"--data_dir={tmp_path}", "--repeats=1")
    _assert_positive(fh, "img_per_s")
    assert fh["images"] == 2 and fh["data_dir"] == str(tmp_path)
    fh_masks.generate(tmp_path, tmp_path / "shards", split="validation", workers=0,
                      progress=False)
    result = _run(repo_root, "pipeline", f"--data_dir={tmp_path / 'shards'}",
                  "--split=validation", "--image_size=32", "--batch_size=2", "--num_batches=2")
    _assert_positive(result, "img_per_s", "cpu_ms_per_img")
    assert result["data_dir"] == str(tmp_path / "shards") and result["split"] == "validation"


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
@pytest.mark.parametrize("what", ["pipeline", "fh"])
def test_missing_data_dir_is_one_line_error(repo_root, tmp_path, what):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "detcon_jax.bench", what, f"--data_dir={tmp_path / 'none'}"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and not proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "none") in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a bench subprocess: kept out of the fast loop
def test_fh_smoke(repo_root):
    result = _run(repo_root, "fh", "--repeats=1")
    _assert_positive(result, "img_per_s", "peak_rss_mb")
    assert result["workers"] == 1


def test_bad_model_is_one_clear_error():
    with pytest.raises(ValueError, match="--model must be one of"):
        bench.step_config(model="resnet9")


def test_synthetic_batch_layout():
    batch = bench.synthetic_batch(2, 96, num_classes=10)
    assert batch["view1"].shape == (2, 96, 96, 3) and batch["mask2"].shape == (2, 96, 96, 1)
    assert batch["mask1"].dtype.name == "uint8"
    assert 0.0 <= batch["view1"].min() and batch["view1"].max() <= 1.0
    # Several segments per 32 px feature cell: mask sampling sees non-trivial masks.
    assert len(set(batch["mask1"][0, :32, :32, 0].ravel().tolist())) > 1


def test_learned_masks_step_config_and_batch():
    config = bench.step_config(model="tiny", image_size=32, masks="learned")
    assert config.masks.source == "learned" and config.masks.learned.bootstrap_steps == 0
    assert config.masks.learned.image_size == 32
    batch = bench.synthetic_batch(2, 32, num_classes=10, cover_size=32)
    assert batch["cover"].shape == (2, 32, 32, 3)
    assert batch["cover_box1"].shape == (2, 4) and batch["cover_flip2"].shape == (2,)
    assert "cover" not in bench.synthetic_batch(2, 32, num_classes=10)
    with pytest.raises(ValueError, match="--masks must be one of"):
        bench.step_config(model="tiny", masks="gt")
