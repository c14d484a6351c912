"""README "Failure behaviour": the guarantees not covered by tests/test_train_*.py.

Smoke config in subprocesses (``cli_helpers.RUN``: the train tests' compiled program where
possible).

- A TFRecord shard whose framing is broken (truncated file, bad checksum) stops with status
  3 and TensorFlow's one-line reason; nothing is checkpointed from a broken stream.
- A record without the requested Felzenszwalb setting (``masks.fh_index`` beyond the
  record's stack, or no stored masks at all) stops with status 3 naming the record.
- A non-finite gradient norm with a finite loss stops with status 1 naming the step; the
  newest checkpoint predates it. The step is wrapped (in the subprocess, through
  ``detcon_jax.step.make_train_step``, which the trainer calls) to report an infinite
  gradient norm from step ``BAD`` on, since no smoke input makes only the gradient overflow.
- SIGTERM before the distributed runtime has started (a process of a two-process job whose
  peer never comes) ends the process promptly and writes nothing.
- ``skipped_images`` is summed over the hosts: two processes, each with its own share of
  the corrupt files, log the total; without ``data.cache`` a bad file counts each epoch.
- A batch size not divisible by the process count is a config error.
- With ``jax_enable_preemption_service`` off, a SIGTERM to every host still stops all of
  them after one step (their signal flags are all-gathered).
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from cli_helpers import (
    EVERY,
    REPO,
    RUN,
    STEPS,
    Training,
    checkpoint_steps,
    folder_with_corrupt_images,
    free_port,
    image_bytes,
    load_state,
    resume_workdir,
    run_cli,
    subprocess_env,
    train_command,
    write_fh_records,
)

RECORDS = 16


def _imagenet_fh(data: pathlib.Path) -> tuple[str, ...]:
    return ("--config.data.source=imagenet_fh", f"--config.data.path={data}",
            "--config.data.num_examples=64")


def _data_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``error: data:`` line of a run that exited with status 3."""
    assert proc.returncode == 3, proc.stderr[-4000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: data:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
@pytest.mark.parametrize("damage", ["truncated", "bad checksum"])
def test_tfrecord_shard_with_broken_framing_exits_3(tmp_path, damage):
    data = tmp_path / "records"
    data.mkdir()
    shard = data / "train-00000-of-00001"
    write_fh_records(shard, RECORDS, label=1)
    raw = bytearray(shard.read_bytes())
    if damage == "truncated":
        raw = raw[:-50]  # cut inside the last record's payload
        reason = "truncated record at"
    else:
        raw[len(raw) // 2] ^= 0xFF  # a payload byte: its CRC no longer matches
        reason = "corrupted record at"
    shard.write_bytes(bytes(raw))
    workdir = tmp_path / "work"
    line = _data_error(run_cli(workdir, *RUN, *_imagenet_fh(data)))
    assert reason in line, line
    assert checkpoint_steps(workdir / "checkpoints") == []


@pytest.mark.parametrize("settings, fh_index, message", [
    (1, 1, "no Felzenszwalb setting 1 (masks.fh_index) in record"),
    (0, 0, "Record has no image/felzenszwalb_segmentations"),
])
@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_record_without_the_requested_fh_setting_exits_3(tmp_path, settings, fh_index,
                                                         message):
    data = tmp_path / "records"
    data.mkdir()
    write_fh_records(data / "train-00000-of-00001", RECORDS, label=1, settings=settings)
    workdir = tmp_path / "work"
    line = _data_error(run_cli(workdir, *RUN, *_imagenet_fh(data),
                               f"--config.masks.fh_index={fh_index}"))
    assert message in line and re.search(r"img\d+\.png", line), line  # names the record
    assert checkpoint_steps(workdir / "checkpoints") == []


BAD = EVERY + 2  # the first step with an infinite gradient norm, after a checkpoint


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_non_finite_gradient_norm_stops_naming_the_step(full_run, tmp_path):
    workdir = resume_workdir(full_run, tmp_path, EVERY)
    argv = ["detcon_jax.train", *train_command(workdir, *RUN)[3:]]
    code = textwrap.dedent(f"""
        import sys

        import jax.numpy as jnp

        from detcon_jax import step as step_lib
        from detcon_jax import train

        make_train_step = step_lib.make_train_step

        def with_infinite_gradient_norm(*args, **kwargs):
            train_step = make_train_step(*args, **kwargs)

            def step(state, batch):
                new, metrics = train_step(state, batch)
                bad = state.step + 1 >= {BAD}
                return new, dict(metrics, grad_norm=jnp.where(bad, jnp.inf,
                                                              metrics["grad_norm"]))
            return step

        step_lib.make_train_step = with_infinite_gradient_norm
        sys.argv = {argv!r}
        train.run()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert f"error: non-finite loss at step {BAD}; stopped (newest checkpoint: step {EVERY})" \
        in proc.stderr, proc.stderr[-4000:]
    assert checkpoint_steps(workdir / "checkpoints") == [EVERY]
    got = load_state(workdir / "checkpoints" / str(EVERY))
    for key, value in load_state(full_run / "checkpoints" / str(EVERY)).items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # The loss itself stayed finite: the gradient norm alone stopped the run.
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(EVERY + 1, BAD))
    assert all(np.isfinite(x["loss"]) and np.isfinite(x["grad_norm"]) for x in lines)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_before_the_distributed_runtime_starts_ends_the_process(tmp_path):
    # Process 0 of a two-process job whose process 1 never starts: it waits in
    # jax.distributed.initialize for its peer (the runtime never comes up).
    workdir = tmp_path / "never"
    run = Training(workdir, "--distributed", *RUN, env=subprocess_env(
        1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", DETCON_NUM_PROCESSES="2",
        DETCON_PROCESS_ID="0"))
    try:
        time.sleep(15)  # imports done, waiting for the peer
        assert run.proc.poll() is None, run.output()[-4000:]
        start = time.time()
        code = run.finish(signal.SIGTERM, timeout=60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert time.time() - start < 60
    assert code != 0, run.output()[-4000:]  # no checkpoint, so not the preemption exit 0
    assert "Stopping at step" not in run.output()
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_skipped_images_are_summed_over_hosts(tmp_path):
    # Files are split round-robin over the hosts in sorted order: host 0 gets bad0.jpg and
    # bad2.png, host 1 gets bad1.jpg; each host meets its own (the source is cached, so
    # once). metrics.jsonl (written by host 0) must count all three.
    images = tmp_path / "folder" / "images"
    images.mkdir(parents=True)
    rs = np.random.RandomState(0)
    jpeg = image_bytes(rs.randint(0, 256, (48, 40, 3)).astype(np.uint8), "JPEG")
    (images / "bad0.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (images / "bad1.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    (images / "bad2.png").write_bytes(rs.bytes(500))
    for i in range(8):
        blocks = rs.randint(0, 256, (6, 5, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        (images / f"good{i}.png").write_bytes(image_bytes(blocks, "PNG"))
    workdir = tmp_path / "pod"
    port = free_port()
    flags = ("--distributed", "--config.num_steps=3", "--config.checkpoint.every_steps=1000",
             "--config.data.source=folder", f"--config.data.path={images.parent}",
             "--config.data.num_examples=64", "--config.data.shuffle_buffer=8")
    runs = [Training(workdir, *flags, env=subprocess_env(
        1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", DETCON_NUM_PROCESSES="2",
        DETCON_PROCESS_ID=str(i))) for i in range(2)]
    try:
        codes = [run.finish(timeout=900) for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    for run, names in zip(runs, (("bad0.jpg", "bad2.png"), ("bad1.jpg",)), strict=True):
        skipped = [x for x in run.output().splitlines()
                   if "Skipping corrupt or truncated image" in x]
        assert sorted(pathlib.Path(x.split()[-1]).name for x in skipped) == sorted(names), \
            skipped
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["skipped_images"] == 3 for x in lines), lines
    # Progress comes from process 0 only; process 1 logs its warnings (above) and nothing else.
    assert re.search(r"step 3/3  loss ", runs[0].output()), runs[0].output()[-3000:]
    assert not re.search(r"step \d+/\d+|Training steps", runs[1].output()), \
        runs[1].output()[-3000:]


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_corrupt_images_are_counted_each_time_they_are_met_without_cache(full_run, tmp_path):
    # Without data.cache every epoch reads the files again, so the two bad files count again
    # in each epoch trained (4 steps of 8 images over 6 good ones per epoch). The resume to
    # the checkpoint's data position (60 batches) drops the epochs before it without decoding
    # them, so it meets no bad file: the count starts from the epochs read since the resume,
    # not from the 2 * 60 * 8 / 6 a replay of the stream would meet. With the cache
    # (test_train_metrics) they count once. (Read-ahead makes the exact count at a step
    # depend on how far the pipeline has read.)
    start = STEPS - EVERY
    workdir = resume_workdir(full_run, tmp_path, start)
    data = folder_with_corrupt_images(tmp_path / "folder")
    proc = run_cli(workdir, *RUN, "--config.data.source=folder", f"--config.data.path={data}",
                   "--config.data.num_examples=64",
                   "--config.data.shuffle_buffer=8", "--config.data.cache=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    counts = [json.loads(x)["skipped_images"]
              for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(counts) == EVERY and counts == sorted(counts), counts
    assert counts[0] >= 2 and counts[-1] > counts[0], counts
    assert counts[-1] < 2 * (start * 8 // 6), counts


def test_batch_not_divisible_by_the_process_count_is_a_config_error():
    from conftest import smoke_config

    from detcon_jax import config as config_lib

    config = smoke_config()  # batch 8
    config_lib.validate_runtime(config, device_count=4, process_count=2)
    with pytest.raises(config_lib.ConfigError,
                       match=r"'batch_size': 8 is not divisible by the 3 processes"):
        config_lib.validate_runtime(config, device_count=4, process_count=3)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_every_host_without_the_preemption_service(tmp_path):
    # jax_enable_preemption_service off: the hosts all-gather their signal flags after every
    # step, so a SIGTERM to both (a little apart) still stops both after one step.
    workdir = tmp_path / "pod"
    port = free_port()
    runs = [Training(workdir, "--distributed", "--verbosity=0", "--config.num_steps=1000",
                     "--config.checkpoint.every_steps=1000", env=subprocess_env(
                         1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                         DETCON_NUM_PROCESSES="2", DETCON_PROCESS_ID=str(i),
                         JAX_ENABLE_PREEMPTION_SERVICE="false"))
            for i in range(2)]
    try:
        for run in runs:
            assert run.wait_for(lambda r=run: r.last_step() > 2), run.output()[-4000:]
        runs[0].proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        runs[1].proc.send_signal(signal.SIGTERM)
        codes = [run.finish() for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    stops = [int(re.search(r"Stopping at step (\d+)", run.output()).group(1)) for run in runs]
    assert stops[0] == stops[1] > 2, stops
    assert checkpoint_steps(workdir / "checkpoints") == [stops[0]]
