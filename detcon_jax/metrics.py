"""Metric writers of a training run: TensorBoard events and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": ..., "loss": ...}``);
on resume the lines after the restored step (logged by the interrupted run after its last
checkpoint) are dropped, so the file always describes one consistent trajectory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers

__all__ = ["JsonlWriter", "create_writer", "read_jsonl"]


def _to_python(value: Any) -> float | int | None:
    value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON line per ``write_scalars`` call; other summaries are ignored."""

    def __init__(self, path: str, *, resume_step: int = 0):
        self.path = path
        if os.path.exists(path):
            kept = [line for line in read_jsonl(path) if line.get("step", 0) <= resume_step]
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(line) + "\n" for line in kept)
            os.replace(tmp, path)
        self._file = open(path, "a")  # noqa: SIM115 - closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        line = {"step": int(step)}
        line.update({k: _to_python(v) for k, v in scalars.items()})
        self._file.write(json.dumps(line) + "\n")

    def write_summaries(self, step, values, metadata=None) -> None:
        pass

    def write_images(self, step, images) -> None:
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The objects of a ``metrics.jsonl`` file (a torn last line is ignored)."""
    lines = []
    with open(path) as f:
        for raw in f:
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


def create_writer(workdir: str, *, is_primary: bool,
                  resume_step: int = 0) -> metric_writers.MetricWriter:
    """TensorBoard (``workdir/tensorboard``) + ``workdir/metrics.jsonl`` on the primary host.

    Other hosts get a writer that writes nothing (every host computes the same global
    metrics).
    """
    if not is_primary:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter([
        metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=resume_step),
    ])
