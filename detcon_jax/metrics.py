"""Metric writers of a training run: TensorBoard events and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": ..., "loss": ...}``);
on resume the lines after the restored step (logged by the interrupted run after its last
checkpoint) are dropped, so the file always describes one consistent trajectory: every
step once, in order.

A local file is appended to. An object in a bucket (``gs://...``) cannot be appended to, and
rewriting the whole file at every flush would upload the run's history again each time
(quadratic in its length). There each flush uploads only the lines since the last one, as
one part object ``metrics.jsonl.parts/STEP.jsonl`` (``STEP``: its first step), and
``metrics.jsonl`` is rewritten once from itself and its parts when a writer opens
(truncated to the resumed step) and when it closes; the parts are deleted after each
rewrite. `read_jsonl` merges the parts, so it sees every flushed step also while a run is
going or after it was killed.

TensorBoard events go to ``WORKDIR/tensorboard`` unless another directory is given (see
`create_writer`): ``tf.summary`` writes them with TensorFlow's own file systems.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from etils import epath

from detcon_jax import paths

__all__ = ["JsonlWriter", "create_writer", "read_jsonl"]

_PARTS_SUFFIX = ".parts"


def _to_python(value: Any) -> float | int | None:
    value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def _parts(path: epath.Path) -> list[epath.Path]:
    """The part objects of ``path``, oldest first (names are zero-padded first steps)."""
    directory = path.parent / (path.name + _PARTS_SUFFIX)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: p.name)


def _parse(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:  # a torn last line of an interrupted append
            continue
    return lines


def _render(lines: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a ``metrics.jsonl`` (local or remote) and its parts, one per step.

    Sorted by step; where a part repeats a step (a rewrite interrupted before its parts
    were deleted), the part's line wins. A torn last line is ignored. Empty when nothing
    exists at ``path``.
    """
    path = paths.as_path(path)
    by_step: dict[int, dict[str, Any]] = {}
    sources = ([path] if path.exists() else []) + _parts(path)
    for source in sources:
        for line in _parse(source.read_text()):
            by_step[int(line.get("step", 0))] = line
    return [by_step[step] for step in sorted(by_step)]


class JsonlWriter(metric_writers.MetricWriter):
    """One JSON line per ``write_scalars`` call; other summaries are ignored.

    Lines reach ``path`` on `flush` (appended locally, one part object remotely; see the
    module docstring) and on `close`.
    """

    def __init__(self, path: str | os.PathLike, *, resume_step: int = 0):
        self.path = paths.as_path(path)
        self._remote = paths.is_remote(self.path)
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        self._file = None
        if self._remote:
            self._rewrite(resume_step)
            return
        if self.path.exists():
            kept = [x for x in read_jsonl(self.path) if x.get("step", 0) <= resume_step]
            paths.write_text(self.path, _render(kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def _rewrite(self, last_step: float) -> None:
        """Remote: ``metrics.jsonl`` := itself + parts up to ``last_step``; parts deleted.

        The parts are deleted oldest first only after the new file is complete, so an
        interruption at any point leaves a file and parts that `read_jsonl` merges into the
        same lines.
        """
        parts = _parts(self.path)
        kept = [x for x in read_jsonl(self.path) if x.get("step", 0) <= last_step]
        paths.write_text(self.path, _render(kept))
        for part in parts:
            part.unlink()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        line = {"step": int(step)}
        line.update({k: _to_python(v) for k, v in scalars.items()})
        if self._file is not None:
            self._file.write(json.dumps(line) + "\n")
        else:
            self._pending.append(line)

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
        if self._file is not None:
            self._file.flush()
        elif self._pending:
            part = self.path.parent / (self.path.name + _PARTS_SUFFIX) / (
                f"{self._pending[0]['step']:012d}.jsonl")
            paths.write_text(part, _render(self._pending))
            self._pending = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            return
        self.flush()
        self._rewrite(math.inf)


def create_writer(workdir: str | os.PathLike, *, is_primary: bool, resume_step: int = 0,
                  tensorboard_dir: str | None = None) -> metric_writers.MetricWriter:
    """TensorBoard + ``workdir/metrics.jsonl`` on the primary host.

    ``tensorboard_dir``: where the TensorBoard events go (default ``workdir/tensorboard``);
    any path ``tf.io.gfile`` serves, e.g. a local folder for a run whose workdir is a bucket.
    Other hosts get a writer that writes nothing (every host computes the same global
    metrics).
    """
    if not is_primary:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter([
        metric_writers.SummaryWriter(paths.tensorboard_dir(workdir, tensorboard_dir)),
        JsonlWriter(paths.as_path(workdir) / "metrics.jsonl", resume_step=resume_step),
    ])
