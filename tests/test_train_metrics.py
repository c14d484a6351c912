"""What a training run writes: checkpoints on the cadence, TensorBoard events, metrics.jsonl.

Smoke config in subprocesses, 1 CPU device, ``cli_helpers.RUN`` (one compiled program for
all train tests, see ``cli_helpers``).

- A fresh run writes checkpoints on the cadence, TensorBoard events (the loss at every
  logged step, read back) and ``metrics.jsonl``.
- Corrupt and truncated images of a ``folder`` source are skipped, logged once by file
  name and counted as ``skipped_images`` in ``metrics.jsonl``; training continues.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import (
    EVERY,
    RUN,
    STEPS,
    checkpoint_steps,
    folder_with_corrupt_images,
    resume_workdir,
    run_cli,
    tensorboard_scalars,
)
from tolerances import EPS32


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
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


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_corrupt_images_are_skipped_logged_once_and_counted(full_run, tmp_path):
    start = STEPS - EVERY
    workdir = resume_workdir(full_run, tmp_path, start)
    data = folder_with_corrupt_images(tmp_path / "folder")
    proc = run_cli(workdir, *RUN, "--config.data.source=folder", f"--config.data.path={data}",
                   "--config.data.num_examples=64", "--config.data.shuffle_buffer=8")
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
