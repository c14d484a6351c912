"""The training CLI's failures: one line naming the cause, an exit status, nothing wrong written.

Smoke config in subprocesses, 1 CPU device; runs that train pass ``cli_helpers.RUN`` (one
compiled program for all train tests, see ``cli_helpers``).

- A re-run of a finished workdir says so and exits 0 without building the input pipeline,
  and without the libraries' start-up noise; the finished run's ``train.log`` ends with the
  summary and the commands to run next.
- Bad configs and flags exit with status 2 and one line naming the key, writing nothing;
  so do a workdir holding another model's checkpoint and a mesh with an axis the step does
  not use.
- A non-finite loss (labels beyond the classifier's classes make the probe's
  cross-entropy NaN) stops with status 1 naming the step; the newest checkpoint is intact.
- A record the pipeline refuses (a mask whose size differs from its image) stops with
  status 3 and one line naming it; a 16-bit id map with ids beyond uint8 names its record.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cli_helpers import (
    EVERY,
    REPO,
    RUN,
    SMOKE,
    STEPS,
    checkpoint_steps,
    image_bytes,
    load_state,
    resume_workdir,
    run_cli,
    subprocess_env,
    write_fh_records,
)


@pytest.mark.slow
@pytest.mark.parametrize("flags, devices, key", [
    (("--config.model.dpeth=3",), None, "dpeth"),
    (("--config.batch_size=12",), 8, "batch_size"),
    (("--config.data.path=/nonexistent/detcon/data",), None, "data.path"),
    # Remote paths skip the local check; tf.io.gfile finds no such file system here.
    (("--config.data.path=nosuchfs://bucket/detcon/data",), None, "data.path"),
    (("--config.masks.source=none",), None, "masks.source"),
    (("--config.batch_size=abc",), None, "batch_size"),
])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, flags, devices, key):
    workdir = tmp_path / "never"
    proc = run_cli(workdir, *flags, devices=devices)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and key in error_lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_workdir_of_another_model_exits_2(full_run):
    before = sorted(str(p) for p in full_run.rglob("*"))
    proc = run_cli(full_run, "--config.model.projection_size=16")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another model" in proc.stderr and str(full_run) in proc.stderr
    assert sorted(str(p) for p in full_run.rglob("*")) == before


# The console noise the CLI keeps out (libraries' start-up and read-only-manager lines).
NOISE = ("Unable to initialize backend", "oneDNN", "absl::InitializeLog", "read only",
         "read_only=True", "Metadata file does not exist")


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_a_finished_workdir_rerun_exits_0_at_once_without_noise(full_run, tmp_path):
    workdir = tmp_path / "done"
    shutil.copytree(full_run, workdir)
    proc = run_cli(workdir, *RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"already finished at step {STEPS} (of {STEPS}): nothing to train" in proc.stderr
    assert "Building the input pipeline" not in proc.stderr, proc.stderr[-3000:]
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr[-3000:]
    assert checkpoint_steps(workdir / "checkpoints") == checkpoint_steps(
        full_run / "checkpoints")
    # The finished run's own log: its summary names the commands to run next.
    train_log = (full_run / "train.log").read_text()
    assert f"Training finished at step {STEPS}: final loss " in train_log
    assert f"tensorboard --logdir={full_run / 'tensorboard'}" in train_log
    assert f"detcon_jax.evaluate.linear --checkpoint={full_run} " in train_log
    assert not [n for n in NOISE if n in train_log], train_log[-3000:]


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(full_run, tmp_path):
    workdir = resume_workdir(full_run, tmp_path, EVERY)
    data = tmp_path / "records"
    data.mkdir()
    # Stored label 1000 -> class 999, beyond the smoke probe's 10 classes: the probe's
    # cross-entropy (and so the loss) is NaN from the first resumed step on. Same program.
    write_fh_records(data / "train-00000-of-00001", 16, label=1000)
    proc = run_cli(workdir, *RUN, "--config.data.source=imagenet_fh",
                   f"--config.data.path={data}", "--config.data.num_examples=64")
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert f"non-finite loss at step {EVERY + 1}" in proc.stderr, proc.stderr[-4000:]
    assert checkpoint_steps(workdir / "checkpoints") == [EVERY]
    got = load_state(workdir / "checkpoints" / str(EVERY))
    want = load_state(full_run / "checkpoints" / str(EVERY))
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_refused_record_stops_with_status_3_naming_it(tmp_path):
    # A ground-truth mask whose size differs from its image: not skipped, reported.
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rs = np.random.RandomState(0)
    for i in range(4):
        (root / "images" / f"im{i}.png").write_bytes(
            image_bytes(rs.randint(0, 256, (40, 48, 3)).astype(np.uint8), "PNG"))
        shape = (40, 48) if i else (24, 48)
        (root / "labels" / f"im{i}.png").write_bytes(
            image_bytes(rs.randint(0, 5, shape).astype(np.uint8), "PNG"))
    workdir = tmp_path / "work"
    proc = run_cli(workdir, *RUN, "--config.data.source=folder", f"--config.data.path={root}",
                   "--config.masks.source=gt", "--config.data.num_examples=64")
    assert proc.returncode == 3, proc.stderr[-4000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: data:")]
    assert len(errors) == 1 and "im0.png" in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert checkpoint_steps(workdir / "checkpoints") == []


def test_sixteen_bit_id_map_with_ids_beyond_uint8_names_the_record(tmp_path):
    import tensorflow as tf

    from detcon_jax.data import decode

    ids = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48, 1) % 300
    data = tf.io.encode_png(tf.constant(ids)).numpy()
    small = tf.io.encode_png(tf.constant(ids % 200)).numpy()
    # 16-bit maps with ids < 256 decode to the same ids (decode_png alone would rescale).
    np.testing.assert_array_equal(decode.decode_id_png(small, "ok.png").numpy(),
                                  ids % 200)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        decode.decode_id_png(data, "labels/x.png").numpy()
    assert "overflow uint8" in str(error.value) and "labels/x.png" in str(error.value)


def test_mesh_with_an_axis_the_step_does_not_use_exits_2(tmp_path):
    config_file = tmp_path / "two_axes.py"
    config_file.write_text(textwrap.dedent(f"""
        import runpy

        from ml_collections import config_dict

        def get_config():
            config = runpy.run_path({SMOKE!r})["get_config"]()
            config.mesh = config_dict.ConfigDict(dict(data=-1, model=1))
            return config
    """))
    workdir = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "detcon_jax.train", f"--config={config_file}",
         f"--workdir={workdir}"], cwd=REPO, env=subprocess_env(), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "'mesh'" in error_lines[0], proc.stderr[-3000:]
    assert not workdir.exists()
