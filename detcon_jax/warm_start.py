"""``config.init_checkpoint``: a new run that starts from an imported encoder.

The encoder's parameters and BatchNorm statistics, online and target alike, come from the
checkpoint; everything else (projector, predictor, the online classifier, the optimiser
state, the step counter and the run key) is a fresh initialisation of the config, exactly as
without it. Accepted sources are those of every evaluator (`evaluate.features.load_backbone`):
an encoder-only orbax directory from ``convert haiku-to-orbax``, a training workdir (its
newest complete checkpoint) or one of its checkpoint directories, and a released Haiku
``.npy``. Every path may be a URI.

A resumed run ignores the key: the workdir's own checkpoint holds the trained encoder.
Errors (a missing path, no encoder in it, an encoder of another architecture than
``config.model``) are `ConfigError`s naming ``init_checkpoint`` and the path, raised by
`load` before the workdir is written.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from detcon_jax import paths
from detcon_jax.config import ConfigError

__all__ = ["apply", "load"]

Variables = dict[str, Any]


def _error(path: str, message: str) -> ConfigError:
    return ConfigError(f"config key 'init_checkpoint': {path}: {message}")


def load(path: str, abstract_state: Any) -> Variables:
    """The encoder ``{'params', 'batch_stats'}`` (host arrays) of ``path``, checked against
    the encoder of ``abstract_state`` (a `step.TrainState` of shapes).

    Raises:
      ConfigError: naming the path: missing, unreadable, or another architecture.
    """
    from detcon_jax.evaluate import features

    try:
        backbone, _ = features.load_backbone(path)
    except paths.UnreachablePathError as e:
        raise _error(path, str(e)) from None
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise _error(path, " ".join(str(e).split())) from None
    variables = jax.tree.map(np.asarray, jax.device_get(dict(backbone.variables)))
    want = {"params": abstract_state.online_params["encoder"],
            "batch_stats": abstract_state.online_batch_stats["encoder"]}
    for collection, tree in want.items():
        have = dict(jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0])
        wanted = jax.tree_util.tree_flatten_with_path(tree)[0]
        for key_path, leaf in wanted:
            name = f"{collection}{jax.tree_util.keystr(key_path)}"
            if key_path not in have:
                raise _error(path, f"encoder has no {name}: another architecture than "
                                   "config.model (depth, blocks_per_group?)")
            if tuple(have[key_path].shape) != tuple(leaf.shape):
                raise _error(path, f"encoder {name} has shape {tuple(have[key_path].shape)}, "
                                   f"config.model's has {tuple(leaf.shape)} (another depth or "
                                   "width?)")
        if len(have) != len(wanted):
            raise _error(path, f"encoder has {len(have)} {collection} arrays, config.model's "
                               f"has {len(wanted)}: another architecture")
    return variables


def apply(state: Any, variables: Variables) -> Any:
    """``state`` with the online (and, when there is one, the target) encoder replaced by
    ``variables``; each array gets the sharding of the one it replaces."""

    def put(old: Any, new: Any) -> Any:
        return jax.tree.map(
            lambda o, n: jax.device_put(np.asarray(n, o.dtype), o.sharding), old, new)

    def replaced(tree: Any, collection: str) -> Any:
        if tree is None:
            return None
        return {**tree, "encoder": put(tree["encoder"], variables[collection])}

    return state.replace(
        online_params=replaced(state.online_params, "params"),
        online_batch_stats=replaced(state.online_batch_stats, "batch_stats"),
        target_params=replaced(state.target_params, "params"),
        target_batch_stats=replaced(state.target_batch_stats, "batch_stats"))
