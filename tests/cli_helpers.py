"""Helpers for tests that run JAX programs in subprocesses (the train CLI, the driver).

Compilation dominates these tests, so every subprocess of a test session shares one
persistent compilation cache: ``JAX_COMPILATION_CACHE_DIR`` from the environment when set
(CI sets one), otherwise a temporary directory made once per session (per xdist worker)
and removed at exit. ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` caches even the
small programs (state initialisation) that JAX would otherwise recompile every time.

One compiled step program for the smoke runs: every training run of the train tests
(``test_train_*.py``, ``test_trainer.py``) passes `RUN` (or at least ``num_steps=STEPS``)
and ``test_step.py`` builds its step with ``STEPS`` total steps, so all of them execute the
same program (the schedules are part of it; checkpoint cadence, data source and seed are
not), compiled once per session cache. The uninterrupted run several train tests compare
against is the session fixture ``full_run`` in ``conftest.py``.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from tolerances import assert_leaves_close, f32_tolerance

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.py")

STEPS = 64
EVERY = 4
# Flags shared by the smoke runs of the train tests (one compiled program for all of them).
RUN = (f"--config.num_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
       "--config.checkpoint.keep=100")


@functools.cache
def session_cache_dir() -> str:
    """The compilation cache directory shared by this session's subprocesses."""
    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if configured:
        return configured
    path = tempfile.mkdtemp(prefix="detcon_jax_test_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """Environment of a CPU JAX subprocess with ``devices`` fake devices (default 1)."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = session_cache_dir()
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def train_command(workdir: os.PathLike, *flags: str) -> list[str]:
    """``python -m detcon_jax.train`` on the smoke config with extra flags."""
    return [sys.executable, "-m", "detcon_jax.train", f"--config={SMOKE}",
            f"--workdir={workdir}", *flags]


def run_cli(workdir: os.PathLike, *flags: str, devices: int | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the train CLI to completion and returns the finished process (text output)."""
    return subprocess.run(train_command(workdir, *flags), cwd=REPO, env=subprocess_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_state(step_dir: pathlib.Path) -> dict:
    """Leaves of a checkpoint's ``state`` item, keyed by their tree path.

    Onto this process's first device, whatever the saving job's devices and processes were
    (orbax restores onto the stored sharding otherwise, which fails for other topologies).
    """
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from etils import epath

    args = ocp.args.StandardRestore(
        fallback_sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        # epath: a checkpoint in a bucket (gs://) as well as a local one.
        tree = checkpointer.restore(epath.Path(step_dir) / "state", args=args)
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def checkpoint_steps(ckpt_dir: pathlib.Path) -> list[int]:
    """Complete checkpoint steps (orbax renames a step directory to its number when done)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def tensorboard_scalars(logdir: os.PathLike, tag: str) -> dict[int, float]:
    """Values of the scalar ``tag`` by step, read from every event file under ``logdir``."""
    import tensorflow as tf

    values: dict[int, float] = {}
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = (float(tf.make_ndarray(value.tensor))
                                          if value.HasField("tensor") else value.simple_value)
    return values


def tensorboard_images(logdir: os.PathLike, tag: str) -> dict:
    """The pictures of the image summary ``tag`` by step (decoded uint8 ``[H, W, 3]``),
    read from every event file under ``logdir``.

    ``tf.summary.image`` stores a string tensor ``[width, height, PNG, ...]`` with the
    ``images`` plugin's metadata.
    """
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    pictures = {}
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                assert value.metadata.plugin_data.plugin_name == "images"
                width, height, png, *more = tf.make_ndarray(value.tensor)
                assert not more  # one picture per step
                picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                assert picture.shape[:2] == (int(height), int(width))
                pictures[event.step] = picture
    return pictures


# The float32 error scale of one smoke-config training step (tests/tolerances.py): its
# longest sums are the BatchNorms' over the batch's first feature maps (8 images x 16 x 16
# = 2048 positions at 32 px), and a value passes ~16 layers forward and as many back. The
# newest gradient (in the LARS momentum) and the newest batch statistics carry this error;
# parameters, which move by lr x trust ratio of their norm per step, carry less.
STATE_TOL = f32_tolerance(2048, depth=32)


def assert_same_state(got: dict, want: dict, *, tol: float = STATE_TOL) -> None:
    """Float leaves to ``|a - b| <= tol (|b| + max of the part)``, integer leaves exactly
    (`tolerances.assert_leaves_close`)."""
    assert_leaves_close(got, want, tol)


class Training:
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


def metrics_steps(workdir: pathlib.Path) -> list[int]:
    """The steps of ``workdir/metrics.jsonl``, in file order."""
    return [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def resume_workdir(full_run: pathlib.Path, tmp_path: pathlib.Path, step: int) -> pathlib.Path:
    """A workdir holding only the full run's checkpoint ``step`` (as after a stop there)."""
    workdir = tmp_path / "work"
    (workdir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_run / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
    return workdir


def image_bytes(array, fmt: str) -> bytes:
    """``array`` encoded as an image file of format ``fmt`` (PIL: "PNG", "JPEG")."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_fh_records(path: pathlib.Path, num: int, label: int, *, settings: int = 1) -> None:
    """Official-layout ImageNet-FH records ``img{i}.png``: PNG images, a 1-based label and
    ``settings`` Felzenszwalb settings (0: no ``image/felzenszwalb_segmentations``)."""
    import numpy as np
    import tensorflow as tf

    rs = np.random.RandomState(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(num):
            image = rs.randint(0, 256, (48, 40, 3)).astype(np.uint8)
            fh = (np.arange(settings * 48 * 40).reshape(settings, 48, 40) // 480).astype(np.uint8)
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(image).numpy()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[label])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[f"img{i}.png".encode()])),
            }
            if settings:
                feature["image/felzenszwalb_segmentations"] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[fh.tobytes()]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def folder_with_corrupt_images(root: pathlib.Path) -> pathlib.Path:
    """``root/images``: six good images (PNG and JPEG) plus ``truncated.jpg`` and
    ``garbage.png``; returns ``root`` (a ``folder`` source's data path)."""
    import numpy as np

    images = root / "images"
    images.mkdir(parents=True)
    rs = np.random.RandomState(0)
    for i in range(6):
        blocks = rs.randint(0, 256, (6, 5, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        (images / f"good{i}.{ext}").write_bytes(image_bytes(blocks, fmt))
    jpeg = image_bytes(rs.randint(0, 256, (48, 40, 3)).astype(np.uint8), "JPEG")
    (images / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (images / "garbage.png").write_bytes(rs.bytes(500))
    return root
