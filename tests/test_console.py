"""The run's console: library noise filtered (and nothing else), train.log, the ETA, the
compilation cache directory. In-process and cheap; the CLI-level checks are in
test_train_cli.py (a finished re-run) and test_trainer.py (plain Python)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax
import pytest

from detcon_jax import console, trainer


def _record(name: str, level: int, message: str, pathname: str = "x.py") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, message, None, None)


@pytest.mark.parametrize("record, kept", [
    (_record("jax._src.xla_bridge", logging.INFO,
             "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"), False),
    (_record("absl", logging.WARNING, "Given directory is read only=/w/checkpoints",
             "/site-packages/orbax/checkpoint/checkpoint_manager.py"), False),
    (_record("absl", logging.WARNING, "Metadata file does not exist: /w/c/1/_CHECKPOINT",
             "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py"), False),
    (_record("absl", logging.INFO, "Saving checkpoint at step 4",
             "/site-packages/orbax/checkpoint/checkpoint_manager.py"), False),
    # Real warnings stay: orbax's others, JAX's warnings, ours.
    (_record("absl", logging.WARNING, "Waiting for previous save to complete took 9 s",
             "/site-packages/orbax/checkpoint/checkpoint_manager.py"), True),
    (_record("jax._src.xla_bridge", logging.WARNING, "Unable to initialize backend 'cuda'"),
     True),
    (_record("absl", logging.INFO, "step 4/8  loss 0.5", "/detcon_jax/trainer.py"), True),
])
def test_library_noise_filter(record, kept):
    assert console._NOISE.filter(record) is kept


def test_tensorflow_start_up_lines_are_dropped_and_others_kept():
    code = ("import os, sys\n"
            "from detcon_jax import console\n"
            "with console.native_noise_filtered():\n"
            "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "    os.write(2, b'a real problem\\n')\n"
            "    print('python line', file=sys.stderr)\n"
            "print('after', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["a real problem", "python line", "after"]


def test_run_log_appends_the_lines_of_each_run(tmp_path):
    workdir = tmp_path / "w"
    logger = logging.getLogger("detcon_jax_test_console")
    logger.setLevel(logging.INFO)
    for text in ("first run", "second run"):
        with console.run_log(str(workdir), is_primary=True):
            logger.info(text)
            logger.debug("not kept")
    lines = (workdir / console.LOG_NAME).read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["first run", "second run"]
    with console.run_log(str(tmp_path / "other"), is_primary=False) as handler:
        logger.info("process 1")
    assert handler is None and not (tmp_path / "other").exists()


def test_eta_excludes_compilation_and_averages_since(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    throughput = console.Throughput(0, total=101)
    now[0] = 160.0  # the first step took a minute: compilation
    throughput.started(1)
    rate, eta = throughput.read(1)  # logged at the first step: its window is the compile
    assert rate == pytest.approx(1 / 60) and eta == "-:--:--"
    now[0] = 170.0  # 10 steps in 10 s
    rate, eta = throughput.read(11)
    assert rate == pytest.approx(1.0) and eta == "0:01:30"
    now[0] = 175.0  # 10 steps in 5 s: the window is faster, the ETA uses the mean since start
    rate, eta = throughput.read(21)
    assert rate == pytest.approx(2.0) and eta == "0:01:00"  # 80 steps at 20/15 steps/s


def test_compilation_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trainer.compilation_cache_dir("") is None
    assert trainer.compilation_cache_dir("gs://b/cache") == "gs://b/cache"
    before = jax.config.jax_compilation_cache_dir  # the environment's, in CI
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert trainer.compilation_cache_dir(None) == str(tmp_path / "detcon_jax" / "jax")
        jax.config.update("jax_compilation_cache_dir", "/env/cache")
        assert trainer.compilation_cache_dir(None) == "/env/cache"
        assert trainer.compilation_cache_dir("/mine") == "/mine"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_window_that_spans_the_compiling_step_starts_after_it(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    throughput = console.Throughput(0, total=10)
    now[0] = 30.0
    throughput.started(1)
    now[0] = 34.0  # steps 2..5 in 4 s; the window since the previous reading spans step 1
    rate, eta = throughput.read(5)
    assert rate == pytest.approx(1.0) and eta == "0:00:05"
