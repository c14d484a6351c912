"""A lost host in a two-process training job started by ``launch/local.sh`` (smoke config).

- ``detcon_jax.distributed``: which errors mean a lost peer, and the heartbeat timeout
  reaching ``jax.distributed.initialize`` (no processes needed).
- SIGKILL of process 1 mid-training: the survivor's next collective fails, it prints one
  line ``error: lost peer process 1 ...`` and exits with status 4; local.sh returns
  non-zero within 120 s of the kill, and only once no process of the run is left.
- A rerun resumes from the newest complete checkpoint. SIGSTOP of process 0 (it hosts
  JAX's coordination service; a stopped process keeps its connections open, like a host
  that vanished): process 1 waits in its next collective until its heartbeats to the
  service go unanswered for ``--heartbeat_timeout`` seconds, then JAX ends it (status
  134, JAX's own message); local.sh stops only when the stopped process is killed too.
- A rerun resumes from the newest complete checkpoint again and finishes: the final state
  equals an uninterrupted two-process run's to ``|a - b| <= STATE_TOL (|b| + m)`` (``m``:
  the largest value of its part of the state; ``cli_helpers``: the float32 error scale of
  a step) and
  ``metrics.jsonl`` holds every step once.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from cli_helpers import (
    REPO,
    SMOKE,
    assert_same_state,
    checkpoint_steps,
    free_port,
    load_state,
    metrics_steps,
    subprocess_env,
)

from detcon_jax import distributed

STEPS = 24
EVERY = 4
HEARTBEAT_S = 20
# The bound the issue sets on a survivor's exit after its peer is lost.
LOST_PEER_BOUND_S = 120
RUN = (f"--config.num_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
       "--config.checkpoint.keep=100", f"--heartbeat_timeout={HEARTBEAT_S}")
GLOO_RESET = ("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] "
              "Read error [127.0.0.1]:18314: Connection reset by peer")


@pytest.mark.parametrize("process_index, peer", [(0, 1), (1, 0)])
def test_a_failed_collective_names_the_other_process(process_index, peer):
    line = distributed.describe_lost_peer(GLOO_RESET, process_index=process_index,
                                          process_count=2)
    assert line.startswith(f"lost peer process {peer} (connection reset: ")
    assert "\n" not in line and "--workdir" in line and "status 4" in line


@pytest.mark.parametrize("text, count", [
    (GLOO_RESET, 1),  # one process has no peer
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes", 2),
    ("INVALID_ARGUMENT: shapes do not match", 4),
])
def test_other_errors_are_not_a_lost_peer(text, count):
    assert distributed.describe_lost_peer(text, process_index=0, process_count=count) is None


def test_heartbeat_timeout_and_process_ids_reach_jax(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("DETCON_NUM_PROCESSES", raising=False)
    assert not distributed.maybe_initialize(requested=False)
    assert calls == []
    monkeypatch.setenv("DETCON_NUM_PROCESSES", "2")
    monkeypatch.setenv("DETCON_PROCESS_ID", "1")
    assert distributed.maybe_initialize(requested=False, heartbeat_timeout_s=7)
    assert calls == [dict(num_processes=2, process_id=1, heartbeat_timeout_seconds=7)]


class _LocalRun:
    """``launch/local.sh --processes=2`` training the smoke config, output read in the
    background; its --python records each process's pid before it becomes the CLI."""

    def __init__(self, tmp: pathlib.Path, workdir: pathlib.Path):
        self.pid_dir = tmp / f"pids-{time.monotonic_ns()}"
        self.pid_dir.mkdir()
        python = self.pid_dir / "python"
        python.write_text(f'#!/bin/sh\necho $$ > {self.pid_dir}/$DETCON_PROCESS_ID\n'
                          f'exec {sys.executable} "$@"\n')
        python.chmod(0o755)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["bash", str(REPO / "launch" / "local.sh"), f"--config={SMOKE}",
             f"--workdir={workdir}", "--processes=2", f"--port={free_port()}",
             f"--python={python}", "--", *RUN, "--verbosity=0"],  # both processes log
            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self, process: int) -> list[str]:
        """Lines of one process (local.sh prefixes process 1's with ``[p1]``; its own
        lines are among process 0's)."""
        prefix = "[p1] "
        if process == 1:
            return [x[len(prefix):] for x in self.lines if x.startswith(prefix)]
        return [x for x in self.lines if not x.startswith(prefix)]

    def last_step(self, process: int) -> int:
        for line in reversed(self.output(process)):
            if match := re.search(r"step (\d+)/\d+", line):
                return int(match.group(1))
        return 0

    def resumed_at(self, process: int) -> int | None:
        for line in self.output(process):
            if match := re.search(r"Resumed from .* at step (\d+)\.", line):
                return int(match.group(1))
        return None

    def wait_for(self, condition, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the run ended or stalled before the expected point:\n"
                                     + "".join(self.lines)[-4000:])
            time.sleep(0.005)

    def pid(self, process: int) -> int:
        return int((self.pid_dir / str(process)).read_text())

    def signal(self, process: int, sig: int) -> None:
        os.kill(self.pid(process), sig)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"local.sh still running after {timeout} s:\n"
                                 + "".join(self.lines)[-4000:]) from None
        self._reader.join(timeout=30)
        return code

    def text(self) -> str:
        return "".join(self.lines)

    def kill_all(self) -> None:
        for process in (0, 1):
            try:
                self.signal(process, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        self.proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _mid_interval(run: _LocalRun, process: int, after: int) -> bool:
    """Past ``after`` and halfway between checkpoints (no save under way on any host)."""
    step = run.last_step(process)
    return step > after and step % EVERY == EVERY // 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run = _LocalRun(tmp, tmp / "run")
    try:
        assert run.wait(timeout=900) == 0, run.text()[-4000:]
    finally:
        run.kill_all()
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lost_host_survivor_exits_and_rerun_resumes_to_the_same_state(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    ckpt = workdir / "checkpoints"

    # SIGKILL process 1 between checkpoints: the survivor's next collective fails.
    run = _LocalRun(tmp_path, workdir)
    try:
        run.wait_for(lambda: _mid_interval(run, 1, after=2 * EVERY))
        run.signal(1, signal.SIGKILL)
        killed = time.monotonic()
        code = run.wait(timeout=LOST_PEER_BOUND_S)
        print(f"SIGKILL of process 1: local.sh returned {time.monotonic() - killed:.1f} s later")
    finally:
        run.kill_all()
    survivor = run.output(0)
    errors = [x for x in survivor if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: lost peer process 1 ("), \
        run.text()[-4000:]
    # local.sh's own lines share the pipe with the processes' (C++ logs may write a line in
    # pieces), so look for its report in the text rather than as a whole line.
    reports = re.findall(r"local\.sh: process \d exited with status \d+", run.text())
    assert "local.sh: process 0 exited with status 4" in reports, reports
    assert code != 0
    assert not _alive(run.pid(0)), "local.sh returned before the survivor had exited"
    newest = checkpoint_steps(ckpt)[-1]

    # Rerun; then SIGSTOP process 0, the coordination service's host.
    run = _LocalRun(tmp_path, workdir)
    try:
        run.wait_for(lambda: _mid_interval(run, 1, after=newest + 1))
        run.signal(0, signal.SIGSTOP)
        stopped = time.monotonic()
        run.wait_for(lambda: "local.sh: process 1 exited with status" in run.text(),
                     timeout=LOST_PEER_BOUND_S)
        print(f"SIGSTOP of process 0: process 1 ended {time.monotonic() - stopped:.1f} s later")
        assert run.proc.poll() is None, "local.sh returned while process 0 still existed"
        run.signal(0, signal.SIGKILL)  # what a scheduler does with a host it gave up on
        code = run.wait(timeout=60)
    finally:
        run.kill_all()
    assert [run.resumed_at(0), run.resumed_at(1)] == [newest, newest], run.text()[-4000:]
    assert code != 0
    assert re.search(r"local.sh: process 1 exited with status [1-9]", run.text())
    assert any("Terminating process because the JAX distributed service detected fatal "
               "errors. This most likely indicates that another task died" in x
               for x in run.output(1)), run.text()[-4000:]
    newest = checkpoint_steps(ckpt)[-1]

    # Rerun to the end.
    run = _LocalRun(tmp_path, workdir)
    try:
        assert run.wait(timeout=900) == 0, run.text()[-4000:]
    finally:
        run.kill_all()
    assert [run.resumed_at(0), run.resumed_at(1)] == [newest, newest], run.text()[-4000:]
    assert_same_state(load_state(ckpt / str(STEPS)),
                      load_state(uninterrupted / "checkpoints" / str(STEPS)))
    assert metrics_steps(workdir) == list(range(1, STEPS + 1))
