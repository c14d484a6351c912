"""Orbax checkpoints of the training state: saves, keep-K, automatic resume.

A checkpoint step directory holds two items: ``state`` (the whole ``TrainState`` pytree,
restored into an abstract target so optax states keep their structure and arrays come back
with the mesh's sharding) and ``meta`` (JSON: the model signature of the run, which says
which model the state belongs to, and the data position). Orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save leaves the previous
checkpoint as the newest complete one. On object stores (``gs://``), where renames are not
atomic, orbax instead writes the step in place and marks it complete with a commit file
(``commit_success.txt``) written last; a step without one is ignored by `latest_step`,
`complete_steps` and restores, and a later save of the same step replaces it.

Directories may be local or URIs (``gs://bucket/run/checkpoints``): every path goes through
``detcon_jax.paths`` (``etils.epath``), never ``os.path``.

``load_haiku_resnet`` (official Haiku ResNet checkpoints -> Flax variables) lives in
``detcon_jax.interop`` and is re-exported here, next to the other checkpoint readers.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from detcon_jax import paths
from detcon_jax.config import ConfigError
from detcon_jax.interop import load_haiku_resnet

__all__ = ["Checkpointer", "abstract_like", "check_workdir_compatible", "complete_steps",
           "load_haiku_resnet"]

_STATE = "state"
_META = "meta"


def abstract_like(tree: Any) -> Any:
    """``ShapeDtypeStruct`` tree (with shardings) of ``tree``, e.g. of ``jax.eval_shape``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def _manager(directory: epath.Path, *, keep: int | None = None,
             read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        # Saves copy the arrays to host memory, then write in a background thread, so the
        # next training steps overlap with the file I/O.
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(_STATE, _META))


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in ``directory`` (none when it does not exist).

    Reads only; an interrupted save (a temporary directory, or on an object store a step
    without its commit file) is not listed.
    """
    directory = paths.as_path(directory)
    if not directory.is_dir():
        return []
    manager = _manager(directory, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def check_workdir_compatible(directory: str | os.PathLike, signature: dict[str, Any]
                             ) -> int | None:
    """Reads (never writes) ``directory``; returns the newest complete step or None.

    Raises:
      ConfigError: when the newest checkpoint belongs to a model with another signature.
    """
    directory = paths.as_path(directory)
    if not directory.is_dir():
        return None
    manager = _manager(directory, read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            return None
        meta = manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        stored = dict(meta[_META]).get("signature")
        if stored != signature:
            raise ConfigError(
                f"workdir checkpoint {directory / str(step)} belongs to another "
                f"model ({stored}), not this config ({signature}); use a fresh --workdir")
        return step
    finally:
        manager.close()


class Checkpointer:
    """Saves the steps its caller asks for and keeps the newest ``keep``.

    The caller owns the cadence (the trainer saves on ``checkpoint.every_steps``, at the last
    step and on preemption); this class never decides to skip a save.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int, signature: dict[str, Any]):
        self.directory = paths.as_path(directory)
        self.signature = signature
        self._manager = _manager(self.directory, keep=keep)

    def latest_step(self) -> int | None:
        """Newest complete checkpoint step (temporary, unfinished saves are ignored)."""
        return self._manager.latest_step()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` of ``step`` (default: newest) into ``abstract_state``.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with shardings (see
        `abstract_like`); the restored arrays are global arrays with those shardings.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract_state),
            _META: ocp.args.JsonRestore(),
        }))
        meta = dict(restored[_META])
        if meta.get("signature") != self.signature:
            raise ConfigError(
                f"checkpoint {self.directory}/{step} belongs to another model "
                f"({meta.get('signature')}), not this config ({self.signature})")
        return restored[_STATE], meta

    def save(self, step: int, state: Any, *, data_position: int) -> None:
        """Saves ``state`` as checkpoint ``step`` with the data position reached.

        Returns once the arrays are copied off the devices; the files are written in the
        background (see `wait`). ``state`` may be donated to the next step right away.
        """
        meta = {"signature": self.signature, "step": int(step),
                "data_position": int(data_position)}
        # force: orbax's own save policy would skip a step while an earlier save is still
        # being written, making the saved steps depend on I/O speed.
        self._manager.save(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _META: ocp.args.JsonSave(meta),
        }), force=True)

    def wait(self) -> None:
        """Blocks until every background save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
