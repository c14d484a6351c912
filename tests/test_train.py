"""The training CLI end to end on the smoke config (subprocesses, 1 CPU device).

Every run here uses the same ``--config.num_steps`` and image size, so all of them execute
one compiled step program, primed into the session's compilation cache by the first run
(``cli_helpers``); checkpoint cadence, data source and seed do not change the program.

- A fresh run writes checkpoints on the cadence, TensorBoard events and ``metrics.jsonl``.
- SIGKILL five times in a row at seeded random points, at least once while a checkpoint
  is being written, then a resume to the end: every start resumes from the newest
  complete checkpoint (never a temporary one), loses at most one checkpoint interval
  (plus the steps of a save still in flight when killed), and the final state equals the
  uninterrupted run's to ``|a - b| <= 1e-6 + 1e-5 |b|`` (same program on the same data;
  only thread scheduling can reorder float sums). ``metrics.jsonl`` ends up holding each
  step exactly once.
- Bad configs and flags exit with status 2 and one line naming the key, writing nothing;
  so does a workdir holding another model's checkpoint.
- SIGTERM checkpoints at the current step and exits 0. With two processes (jax.distributed
  on 127.0.0.1, one device each): a SIGTERM to one of them stops both after the same step
  (JAX's preemption sync point), which is checkpointed, and both exit 0; then a resumed
  two-process run, SIGTERM to both, stops both at one later step.
- A non-finite loss (labels beyond the classifier's classes make the probe's
  cross-entropy NaN) stops with status 1 naming the step; the newest checkpoint is intact.
- Corrupt and truncated images of a ``folder`` source are skipped, logged once by file
  name and counted as ``skipped_images`` in ``metrics.jsonl``; training continues.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from cli_helpers import (
    REPO,
    assert_same_state,
    checkpoint_steps,
    free_port,
    load_state,
    run_cli,
    subprocess_env,
    tensorboard_scalars,
    train_command,
)
from tolerances import EPS32

STEPS = 64
EVERY = 4
# Flags shared by every run of this module (one compiled program for all of them).
RUN = (f"--config.num_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
       "--config.checkpoint.keep=100")


class _Training:
    """A train CLI subprocess whose stderr is read in the background."""

    def __init__(self, workdir: pathlib.Path, *flags: str, env: dict | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            train_command(workdir, *flags), cwd=REPO, env=env or subprocess_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def last_step(self) -> int:
        """The last step reported on the console (0 before the first)."""
        for line in reversed(self.lines):
            match = re.search(r"step (\d+)/\d+", line)
            if match:
                return int(match.group(1))
        return 0

    def wait_for(self, condition, timeout: float = 600, poll: float = 0.005) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            if condition():
                return True
            time.sleep(poll)
        raise TimeoutError("training subprocess made no progress:\n" + self.output()[-3000:])

    def finish(self, sig: int | None = None, timeout: float = 300) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=30)
        return code

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted smoke run (STEPS steps, a checkpoint every EVERY, all kept)."""
    workdir = tmp_path_factory.mktemp("full")
    proc = run_cli(workdir, *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def _metrics_steps(workdir: pathlib.Path) -> list[int]:
    return [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_cli_writes_checkpoints_tensorboard_and_metrics(full_run):
    assert checkpoint_steps(full_run / "checkpoints") == list(range(EVERY, STEPS + 1, EVERY))
    lines = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    # TensorBoard holds the same loss at every logged step (float32 summaries of the
    # float64 JSON values: equal to float32 rounding, |a - b| <= eps32 |b|).
    events = tensorboard_scalars(full_run / "tensorboard", "loss")
    assert sorted(events) == [line["step"] for line in lines]
    for line in lines:
        assert events[line["step"]] == pytest.approx(line["loss"], rel=EPS32, abs=0), line
    for line in lines:
        for key in ("loss", "repr_loss", "lr", "tau", "images_per_s", "steps_per_s",
                    "proj_std", "pred_std", "classif_loss", "top1_accuracy"):
            assert key in line and np.isfinite(line[key]), (key, line)
        assert line["skipped_images"] == 0
    meta = json.loads((full_run / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["step"] == STEPS and meta["data_position"] == STEPS
    assert meta["signature"]["method"] == "detcon_b"


def _temporary_checkpoints(ckpt_dir: pathlib.Path) -> list[str]:
    if not ckpt_dir.is_dir():
        return []
    return [p.name for p in ckpt_dir.iterdir() if not p.name.isdigit()]


def test_sigkill_five_times_then_resume_equals_uninterrupted(full_run, tmp_path):
    workdir = tmp_path / "killed"
    ckpt_dir = workdir / "checkpoints"
    rng = np.random.default_rng(2024)
    # Kill points: once during start-up, twice while a checkpoint is being written, twice
    # at a random time after training has started.
    modes = ["startup", "save", "running", "save", "running"]
    saw_partial = 0
    for mode in modes:
        newest_before = (checkpoint_steps(ckpt_dir) or [0])[-1]
        run = _Training(workdir, *RUN)
        if mode == "startup":
            time.sleep(rng.uniform(1.0, 5.0))
        elif mode == "save":
            # Orbax writes a step into a temporary directory and renames it when complete.
            # Kill during the second save of this run, so that the first one completes.
            run.wait_for(lambda after=newest_before + EVERY: any(
                name.split(".")[0].isdigit() and int(name.split(".")[0]) > after
                for name in _temporary_checkpoints(ckpt_dir)))
        else:
            target = newest_before + int(rng.integers(1, 2 * EVERY))
            run.wait_for(lambda r=run, after=target: r.last_step() >= after)
            time.sleep(rng.uniform(0.0, 0.25))
        assert run.proc.poll() is None, f"run finished before the {mode} kill"
        reached = run.last_step()
        run.finish(signal.SIGKILL)
        log = run.output()
        if newest_before and mode != "startup":
            # It resumed from the newest complete checkpoint there was.
            assert f"at step {newest_before}." in log, log[-3000:]
        complete = checkpoint_steps(ckpt_dir)
        partial = _temporary_checkpoints(ckpt_dir)
        saw_partial += bool(partial)
        newest = (complete or [0])[-1]
        print(f"{mode} kill: resumed at {newest_before}, reached {reached}, complete "
              f"{complete}, partial {partial}")
        # At most one interval lost, plus the save that may still have been in flight.
        assert newest >= reached // EVERY * EVERY - EVERY, (mode, reached, complete)
        for step in complete:  # every complete checkpoint is loadable
            assert (ckpt_dir / str(step) / "state").is_dir()
    assert saw_partial >= 1, "no kill landed during a checkpoint save"

    newest = checkpoint_steps(ckpt_dir)[-1]
    proc = run_cli(workdir, *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"at step {newest}." in proc.stderr
    got = load_state(ckpt_dir / str(STEPS))
    assert_same_state(got, load_state(full_run / "checkpoints" / str(STEPS)))
    assert _metrics_steps(workdir) == list(range(1, STEPS + 1))


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


def test_workdir_of_another_model_exits_2(full_run):
    before = sorted(str(p) for p in full_run.rglob("*"))
    proc = run_cli(full_run, "--config.model.projection_size=16")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another model" in proc.stderr and str(full_run) in proc.stderr
    assert sorted(str(p) for p in full_run.rglob("*")) == before


def test_sigterm_checkpoints_current_step_and_exits_0(tmp_path):
    workdir = tmp_path / "preempted"
    # Checkpoints only at the very end: the one written is the preemption checkpoint.
    run = _Training(workdir, f"--config.num_steps={STEPS}", "--config.checkpoint.every_steps=1000")
    assert run.wait_for(lambda: run.last_step() >= 2), run.output()[-3000:]
    code = run.finish(signal.SIGTERM)
    assert code == 0, run.output()[-4000:]
    steps = checkpoint_steps(workdir / "checkpoints")
    assert len(steps) == 1 and 2 <= steps[0] < STEPS, steps
    assert f"Stopping at step {steps[0]}" in run.output()
    assert _metrics_steps(workdir)[-1] == steps[0]


def _write_fh_records(path: pathlib.Path, num: int, label: int) -> None:
    """Official-layout ImageNet-FH records: PNG images, a 1-based label, one FH setting."""
    import tensorflow as tf

    rs = np.random.RandomState(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(num):
            image = rs.randint(0, 256, (48, 40, 3)).astype(np.uint8)
            fh = (np.arange(48 * 40).reshape(1, 48, 40) // 480).astype(np.uint8)
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(image).numpy()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[label])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[f"img{i}.png".encode()])),
                "image/felzenszwalb_segmentations": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[fh.tobytes()])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def _resume_workdir(full_run: pathlib.Path, tmp_path: pathlib.Path, step: int) -> pathlib.Path:
    """A workdir holding only the full run's checkpoint ``step`` (as after a stop there)."""
    workdir = tmp_path / "work"
    (workdir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_run / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
    return workdir


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(full_run, tmp_path):
    workdir = _resume_workdir(full_run, tmp_path, EVERY)
    data = tmp_path / "records"
    data.mkdir()
    # Stored label 1000 -> class 999, beyond the smoke probe's 10 classes: the probe's
    # cross-entropy (and so the loss) is NaN from the first resumed step on. Same program.
    _write_fh_records(data / "train-00000-of-00001", 16, label=1000)
    proc = run_cli(workdir, *RUN, "--config.data.source=imagenet_fh",
                   f"--config.data.path={data}", "--config.data.num_examples=64")
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert f"non-finite loss at step {EVERY + 1}" in proc.stderr, proc.stderr[-4000:]
    assert checkpoint_steps(workdir / "checkpoints") == [EVERY]
    got = load_state(workdir / "checkpoints" / str(EVERY))
    want = load_state(full_run / "checkpoints" / str(EVERY))
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _image_bytes(array: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_corrupt_images_are_skipped_logged_once_and_counted(full_run, tmp_path):
    start = STEPS - EVERY
    workdir = _resume_workdir(full_run, tmp_path, start)
    images = tmp_path / "folder" / "images"
    images.mkdir(parents=True)
    rs = np.random.RandomState(0)
    for i in range(6):
        blocks = rs.randint(0, 256, (6, 5, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        (images / f"good{i}.{ext}").write_bytes(_image_bytes(blocks, fmt))
    jpeg = _image_bytes(rs.randint(0, 256, (48, 40, 3)).astype(np.uint8), "JPEG")
    (images / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (images / "garbage.png").write_bytes(rs.bytes(500))
    proc = run_cli(workdir, *RUN, "--config.data.source=folder",
                   f"--config.data.path={images.parent}", "--config.data.num_examples=64",
                   "--config.data.shuffle_buffer=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert checkpoint_steps(workdir / "checkpoints") == [start, STEPS]
    for name in ("truncated.jpg", "garbage.png"):
        logged = [x for x in proc.stderr.splitlines()
                  if "Skipping corrupt or truncated image" in x and name in x]
        assert len(logged) == 1, proc.stderr[-4000:]
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(start + 1, STEPS + 1))
    # The source is cached after its first pass, so each bad file is met (and counted) once.
    assert all(x["skipped_images"] == 2 for x in lines), lines
    assert all(np.isfinite(x["loss"]) for x in lines)


def _two_hosts(workdir: pathlib.Path, *flags: str) -> list[_Training]:
    port = free_port()
    return [
        _Training(workdir, "--distributed", *flags, env=subprocess_env(
            1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", DETCON_NUM_PROCESSES="2",
            DETCON_PROCESS_ID=str(i)))
        for i in range(2)
    ]


def _stop_steps(runs: list[_Training]) -> list[int]:
    steps = []
    for run in runs:
        match = re.search(r"Stopping at step (\d+)", run.output())
        assert match, run.output()[-4000:]
        steps.append(int(match.group(1)))
    return steps


def _sigterm_two_hosts(workdir, flags, *, after_step: int, hosts: tuple[int, ...]):
    """Two hosts train until both are past ``after_step``; then ``hosts`` get SIGTERM.
    Returns the runs and their exit codes (a host left running is killed)."""
    runs = _two_hosts(workdir, *flags)
    try:
        for run in runs:
            assert run.wait_for(lambda r=run: r.last_step() > after_step), run.output()[-4000:]
        for host in hosts:
            runs[host].proc.send_signal(signal.SIGTERM)
        codes = [run.finish() for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
    return runs, codes


@pytest.mark.multiprocess
def test_multihost_sigterm_every_host_stops_at_the_same_step(tmp_path):
    workdir = tmp_path / "pod"
    flags = ("--config.num_steps=1000", "--config.checkpoint.every_steps=1000")
    # A preemption notice reaches one host only.
    runs, codes = _sigterm_two_hosts(workdir, flags, after_step=1, hosts=(1,))
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    first, second = _stop_steps(runs)
    assert first == second >= 2
    assert checkpoint_steps(workdir / "checkpoints") == [first]

    # Resume on both hosts, then SIGTERM both (what a scheduler sends to a whole job).
    runs, codes = _sigterm_two_hosts(workdir, flags, after_step=first + 1, hosts=(0, 1))
    assert codes == [0, 0], [run.output()[-3000:] for run in runs]
    assert all(f"at step {first}." in run.output() for run in runs)
    stop_a, stop_b = _stop_steps(runs)
    assert stop_a == stop_b > first
    assert checkpoint_steps(workdir / "checkpoints") == [first, stop_a]


def test_refused_record_stops_with_status_3_naming_it(tmp_path):
    # A ground-truth mask whose size differs from its image: not skipped, reported.
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rs = np.random.RandomState(0)
    for i in range(4):
        (root / "images" / f"im{i}.png").write_bytes(
            _image_bytes(rs.randint(0, 256, (40, 48, 3)).astype(np.uint8), "PNG"))
        shape = (40, 48) if i else (24, 48)
        (root / "labels" / f"im{i}.png").write_bytes(
            _image_bytes(rs.randint(0, 5, shape).astype(np.uint8), "PNG"))
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

    from detcon_jax import input_pipeline

    ids = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48, 1) % 300
    data = tf.io.encode_png(tf.constant(ids)).numpy()
    small = tf.io.encode_png(tf.constant(ids % 200)).numpy()
    # 16-bit maps with ids < 256 decode to the same ids (decode_png alone would rescale).
    np.testing.assert_array_equal(input_pipeline.decode_id_png(small, "ok.png").numpy(),
                                  ids % 200)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        input_pipeline.decode_id_png(data, "labels/x.png").numpy()
    assert "overflow uint8" in str(error.value) and "labels/x.png" in str(error.value)
