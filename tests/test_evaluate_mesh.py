"""Evaluators on the mesh: 8 fake devices equal 1 device, 2 processes equal 1 process, and
feature extraction whose peak memory does not grow with the data set (all subprocesses:
the device count and the distributed runtime are fixed when JAX starts)."""

from __future__ import annotations

import json
import subprocess
import sys

import eval_helpers
import pytest
from cli_helpers import REPO, free_port, subprocess_env

DRIVER = str(REPO / "tests" / "eval_mesh_driver.py")


@pytest.fixture(scope="module")
def subsets(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh_data")
    cifar = eval_helpers.link_cifar_subset(data_dir / "cifar10", root / "cifar", 2)
    camvid = eval_helpers.link_camvid_subset(data_dir / "camvid", root / "camvid",
                                             (("train", 8), ("val", 5)))
    return cifar, camvid


def _driver(subsets, out, *flags, env):
    return subprocess.Popen([sys.executable, DRIVER, str(subsets[0]), str(subsets[1]),
                             str(out), *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _results(out, names=("knn", "probe")):
    return {name: json.loads((out / f"{name}.json").read_text()) for name in names}


@pytest.fixture(scope="module")
def one_device(subsets, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_device")
    run = _driver(subsets, out, "--finetune", env=subprocess_env(1))
    log = run.communicate(timeout=900)[0]
    assert run.returncode == 0, log[-4000:]
    return _results(out, ("knn", "probe", "finetune"))


@pytest.mark.slow
def test_eight_devices_equal_one_device(subsets, one_device, tmp_path):
    run = _driver(subsets, tmp_path, "--finetune", env=subprocess_env(8))
    log = run.communicate(timeout=900)[0]
    assert run.returncode == 0, log[-4000:]
    got = _results(tmp_path, ("knn", "probe", "finetune"))
    # Top-1 and mIoU count whole images / pixels: equal.
    assert got["knn"]["top1"] == one_device["knn"]["top1"]
    assert got["probe"]["miou"] == one_device["probe"]["miou"]
    assert got["probe"]["confusion_matrix"] == one_device["probe"]["confusion_matrix"]
    # Fine-tuning with BatchNorm over the global batch of 8, split over 8 devices: the same
    # losses up to float32 reduction order over three steps.
    want, have = one_device["finetune"]["losses"], got["finetune"]["losses"]
    assert len(have) == len(want) == 3
    for a, b in zip(have, want, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process(subsets, one_device, tmp_path):
    """Each process extracts its shard of the images into the shared cache; both read all
    rows back in the images' order. The fine-tune reads one global training order (each
    process its rows of every global batch): the same batches as one process's."""
    port = free_port()
    runs = [_driver(subsets, tmp_path, "--distributed", "--finetune", env=subprocess_env(
        1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", DETCON_NUM_PROCESSES="2",
        DETCON_PROCESS_ID=str(i))) for i in range(2)]
    logs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [log[-3000:] for log in logs]
    got = _results(tmp_path, ("knn", "probe", "finetune"))
    assert got["knn"]["num_train"] == one_device["knn"]["num_train"]
    assert got["knn"]["top1"] == one_device["knn"]["top1"]
    assert got["probe"]["confusion_matrix"] == one_device["probe"]["confusion_matrix"]
    # The global batch of 8 is split 4 + 4 over the processes: the same images and crops,
    # so the same losses up to float32 reduction order (as 8 devices vs 1 above).
    want, have = one_device["finetune"]["losses"], got["finetune"]["losses"]
    assert len(have) == len(want) == 3
    for a, b in zip(have, want, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert got["finetune"]["miou"] == one_device["finetune"]["miou"]
    assert got["finetune"]["confusion_matrix"] == one_device["finetune"]["confusion_matrix"]


@pytest.mark.slow  # 22,000 generated images through a small ResNet
def test_extraction_peak_memory_does_not_grow_with_the_data_set(tmp_path):
    peaks = []
    for num in (2_000, 20_000):
        run = subprocess.run([sys.executable, str(REPO / "tests" / "eval_rss_driver.py"),
                              str(num), str(tmp_path / str(num))], cwd=REPO,
                             env=subprocess_env(1), capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        peaks.append(int(run.stdout.split()[-1]))
    # 18,000 more images are ~150 MB more features (8 KB each): in memory they would raise
    # the peak by more than that; streamed, the peak stays one shard (8 MB) ahead.
    assert peaks[1] <= 1.10 * peaks[0], peaks
