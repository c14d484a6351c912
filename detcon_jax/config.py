"""Validation of experiment configs: ranges and cross-field checks, before anything is written.

The keys and their types are fixed by the locked base config (``detcon_jax/configs/base.py``,
which lists them): an unknown key or a value of another type fails where it is set. What a
type cannot say is checked here: impossible values and inconsistent combinations raise
`ConfigError` with one line that names the offending key; ``train.py`` turns that into exit
code 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConfigError",
    "MESH_AXES",
    "METHODS",
    "check_schedule",
    "data_path_error",
    "has_discovery_network",
    "is_url",
    "MASK_SOURCES",
    "model_signature",
    "resolve_mesh_shape",
    "uses_target_network",
    "validate",
    "validate_runtime",
]

METHODS = ("detcon_b", "detcon_s", "byol", "simclr")
MASK_SOURCES = ("fh", "gt", "grid", "learned", "none")
LEARNED_NETWORKS = ("target", "ema", "online")
BOOTSTRAP_SOURCES = ("fh", "grid")
KMEANS_DISTANCES = ("cosine", "euclidean")
DEPTHS = (18, 34, 50, 101, 152, 200)
DTYPES = ("float32", "bfloat16")
# Sources that cannot work without a data directory.
SOURCES_NEEDING_PATH = ("imagenet_fh", "folder")
DATA_SOURCES = ("imagenet_fh", "tfds", "folder", "skimage", "synthetic")
NEGATIVES = ("global", "group")
# The mesh axes the train step uses (``sharding.DATA_AXIS``: the batch dimension).
MESH_AXES = ("data",)


class ConfigError(ValueError):
    """A config or flag is invalid; the message is one line naming the key or path."""


def _as_dict(value: Any) -> Mapping[str, Any] | None:
    """A ConfigDict/dict as a plain mapping (without resolving into dicts), else None."""
    if isinstance(value, Mapping):
        return value
    if hasattr(value, "keys") and hasattr(value, "__getitem__"):
        return {k: value[k] for k in value.keys()}
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


def validate(config: Any) -> None:
    """Checks everything that does not depend on the devices; raises `ConfigError`.

    Includes existence of a local data directory; remote (``scheme://``) paths are checked by
    the train CLI with ``tf.io.gfile`` before anything is written.
    """
    _require(config.method in METHODS, "method", f"must be one of {METHODS}, got {config.method!r}")
    m = config.model
    _require(m.depth in DEPTHS, "model.depth", f"must be one of {DEPTHS}, got {m.depth}")
    for key in ("width_multiplier", "mlp_hidden_size", "projection_size"):
        _require(m[key] >= 1, f"model.{key}", f"must be >= 1, got {m[key]}")
    _require(0 <= m.bn_decay < 1, "model.bn_decay", f"must be in [0, 1), got {m.bn_decay}")
    _require(m.bn_epsilon > 0, "model.bn_epsilon", f"must be > 0, got {m.bn_epsilon}")
    _require(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {m.dtype!r}")
    _require(m.num_classes >= 0, "model.num_classes", f"must be >= 0, got {m.num_classes}")
    for key in ("blocks_per_group", "channels_per_group"):
        value = m[key]
        if value is not None:
            _require(len(value) == 4 and all(_is_int(v) and v >= 1 for v in value),
                     f"model.{key}", f"must be 4 positive ints or None, got {value!r}")

    k = config.masks
    _require(k.source in MASK_SOURCES, "masks.source",
             f"must be one of {MASK_SOURCES}, got {k.source!r}")
    if config.method in ("detcon_b", "detcon_s"):
        _require(k.source != "none", "masks.source",
                 f"must be 'fh', 'gt', 'grid' or 'learned' for method {config.method!r}")
    else:
        _require(k.source == "none", "masks.source",
                 f"must be 'none' for method {config.method!r} (one whole-image mask)")
    _require(k.num_samples >= 1, "masks.num_samples", f"must be >= 1, got {k.num_samples}")
    _require(1 <= k.max_mask_id <= 256, "masks.max_mask_id",
             f"must be in [1, 256] (mask ids are uint8), got {k.max_mask_id}")
    _require(k.grid_size >= 1, "masks.grid_size", f"must be >= 1, got {k.grid_size}")
    if k.source == "grid" or (k.source == "learned" and k.learned.bootstrap_source == "grid"):
        _require(k.grid_size**2 <= k.max_mask_id, "masks.grid_size",
                 f"gives {k.grid_size**2} cells, more than masks.max_mask_id={k.max_mask_id}")
    _require(k.fh_index >= 0, "masks.fh_index", f"must be >= 0, got {k.fh_index}")
    if k.source == "learned":
        _validate_learned(config)

    o = config.optim
    _require(o.base_learning_rate >= 0, "optim.base_learning_rate", "must be >= 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _require(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)")
    _require(o.trust_coefficient > 0, "optim.trust_coefficient", "must be > 0")
    _require(0 <= o.base_ema <= 1, "optim.base_ema", "must be in [0, 1]")
    if o.warmup_epochs is not None:
        _require(o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")

    d = config.data
    _require(d.source in DATA_SOURCES, "data.source",
             f"must be one of {DATA_SOURCES}, got {d.source!r}")
    _require(d.image_size >= 32 and d.image_size % 32 == 0, "data.image_size",
             f"must be a positive multiple of 32 (the encoder stride), got {d.image_size}")
    if d.num_examples is not None:
        _require(d.num_examples >= 1, "data.num_examples", "must be >= 1")
    if d.shuffle_buffer is not None:
        _require(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1 or None")
    _require(d.synthetic_num_images >= 1, "data.synthetic_num_images", "must be >= 1")
    if d.source == "tfds":
        _require(bool(d.tfds_name), "data.tfds_name", "must be set for data.source='tfds'")
    if d.source in SOURCES_NEEDING_PATH:
        _require(bool(d.path), "data.path", f"must be set for data.source={d.source!r}")
    # Remote paths (gs://, s3://, ...) are checked by the input pipeline with tf.io.gfile at
    # startup (see `data_path_error`); this module stays free of TensorFlow.
    if d.path and not is_url(d.path) and not os.path.isdir(os.path.expanduser(d.path)):
        raise ConfigError(data_path_error(d.path))

    init = config.get("init_checkpoint")
    if init and not is_url(init) and not os.path.exists(os.path.expanduser(init)):
        raise ConfigError(f"config key 'init_checkpoint': {init}: no such file or directory "
                          "(give a `convert haiku-to-orbax` output, a workdir or a Haiku .npy)")
    _require(config.batch_size >= 1, "batch_size", f"must be >= 1, got {config.batch_size}")
    _validate_loss(config)
    _require(config.num_epochs >= 1, "num_epochs", f"must be >= 1, got {config.num_epochs}")
    if config.num_steps is not None:
        _require(config.num_steps >= 1, "num_steps", f"must be >= 1, got {config.num_steps}")
    _require(config.checkpoint.every_steps >= 1, "checkpoint.every_steps", "must be >= 1")
    _require(config.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _require(config.log_every_steps >= 1, "log_every_steps", "must be >= 1")
    _require(_is_int(config.image_every_steps) and config.image_every_steps >= 0,
             "image_every_steps", f"must be an int >= 0 (0: no image summaries), got "
             f"{config.image_every_steps!r}")
    sizes = _as_dict(config.mesh)
    _require(bool(sizes), "mesh", "must be a non-empty dict axis -> size")
    for axis, size in sizes.items():
        _require(_is_int(size) and (size >= 1 or size == -1), f"mesh.{axis}",
                 f"must be a positive int or -1, got {size!r}")
    _require(list(sizes.values()).count(-1) <= 1, "mesh", "may have at most one axis of size -1")
    # An axis the step does not shard over would silently replicate the work on it.
    _require(tuple(sizes) == MESH_AXES, "mesh",
             f"must have exactly the axes {MESH_AXES} (the step shards only the batch), "
             f"got {tuple(sizes)}")


def check_schedule(warmup_steps: int, total_steps: int) -> None:
    """Raises `ConfigError`, saying the fix, when the warm-up does not end before the last step."""
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"config key 'optim.warmup_epochs': {warmup_steps} warm-up steps >= {total_steps} "
            f"total steps (for a short run add --config.optim.warmup_epochs=0, or train more "
            f"than {warmup_steps} steps)")


def _validate_learned(config: Any) -> None:
    """``masks.learned`` (only read for ``masks.source='learned'``)."""
    k, lm = config.masks, config.masks.learned
    key = "masks.learned."
    _require(2 <= lm.num_clusters <= k.max_mask_id, key + "num_clusters",
             f"must be in [2, masks.max_mask_id={k.max_mask_id}], got {lm.num_clusters}")
    _require(lm.iterations >= 1, key + "iterations", f"must be >= 1, got {lm.iterations}")
    _require(lm.distance in KMEANS_DISTANCES, key + "distance",
             f"must be one of {KMEANS_DISTANCES}, got {lm.distance!r}")
    _require(lm.image_size >= 32 and lm.image_size % 32 == 0, key + "image_size",
             f"must be a positive multiple of 32 (the encoder stride), got {lm.image_size}")
    _require(1 <= lm.layer <= 4, key + "layer",
             f"must be a block group of the encoder, 1-4 (4 = the last), got {lm.layer}")
    _require(lm.network in LEARNED_NETWORKS, key + "network",
             f"must be one of {LEARNED_NETWORKS}, got {lm.network!r}")
    if lm.network == "target":
        _require(uses_target_network(config.method), key + "network",
                 f"'target' needs a target network; method {config.method!r} has none "
                 "(use 'ema' or 'online')")
    _require(0 <= lm.ema_rate < 1, key + "ema_rate", f"must be in [0, 1), got {lm.ema_rate}")
    _require(lm.bootstrap_steps >= 0, key + "bootstrap_steps",
             f"must be >= 0, got {lm.bootstrap_steps}")
    _require(lm.bootstrap_source in BOOTSTRAP_SOURCES, key + "bootstrap_source",
             f"must be one of {BOOTSTRAP_SOURCES}, got {lm.bootstrap_source!r}")


def _validate_loss(config: Any) -> None:
    """The loss keys, including which ablation switches mean something for the method."""
    loss = config.loss
    _require(loss.temperature > 0, "loss.temperature", "must be > 0")
    _require(loss.negatives in NEGATIVES, "loss.negatives",
             f"must be one of {NEGATIVES}, got {loss.negatives!r}")
    size = loss.negatives_group_size
    if loss.negatives == "group":
        _require(size is not None, "loss.negatives_group_size",
                 "must be set (images per group) for loss.negatives='group'")
        _require(size >= 1, "loss.negatives_group_size", f"must be >= 1, got {size}")
        _require(config.batch_size % size == 0,
                 "loss.negatives_group_size",
                 f"must divide batch_size={config.batch_size}, got {size}")
    else:
        _require(size is None, "loss.negatives_group_size",
                 f"is only used with loss.negatives='group' (got {size} with "
                 f"loss.negatives={loss.negatives!r}); leave it None")
    if config.method == "byol":
        _require(loss.negatives == "global", "loss.negatives",
                 "does not apply to method 'byol' (a regression loss without negatives); "
                 "leave it 'global'")
    if config.method in ("byol", "simclr"):
        _require(loss.same_image_negatives, "loss.same_image_negatives",
                 f"does not apply to method {config.method!r} (one mask per image, no other "
                 "mask of the same image); leave it True")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` paths (gs://, s3://, hdfs://): not checkable with ``os``."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def data_path_error(path: str) -> str:
    """The one-line message for a data directory that does not exist (local or remote)."""
    return f"config key 'data.path': directory not found: {path}"


def resolve_mesh_shape(mesh: Any, device_count: int) -> dict[str, int]:
    """Axis name -> size with the single ``-1`` axis filled in; raises `ConfigError`."""
    sizes = dict(_as_dict(mesh))
    known = math.prod(s for s in sizes.values() if s != -1)
    for axis, size in sizes.items():
        if size == -1:
            if device_count % known:
                raise ConfigError(
                    f"config key 'mesh.{axis}': {device_count} devices are not divisible by "
                    f"the other axes' product {known}")
            sizes[axis] = device_count // known
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(
            f"config key 'mesh': axis sizes {sizes} do not multiply to the {device_count} "
            "devices")
    return sizes


def validate_runtime(config: Any, *, device_count: int, process_count: int) -> None:
    """Checks that need the device topology (after ``jax.distributed.initialize``)."""
    sizes = resolve_mesh_shape(config.mesh, device_count)
    data_size = sizes.get("data", 1)
    if config.batch_size % device_count or config.batch_size % data_size:
        raise ConfigError(
            f"config key 'batch_size': {config.batch_size} is not divisible by the "
            f"{device_count} devices")
    if config.batch_size % process_count:
        raise ConfigError(
            f"config key 'batch_size': {config.batch_size} is not divisible by the "
            f"{process_count} processes")


def uses_target_network(method: str) -> bool:
    """True for the BYOL-style methods (online + EMA target), False for SimCLR-style ones."""
    return method in ("detcon_b", "byol")


def model_signature(config: Any) -> dict[str, Any]:
    """The config entries that fix the shapes of the trained state (stored with checkpoints).

    A workdir whose checkpoint has another signature belongs to another model.
    """
    m = config.model
    signature = {
        "method": str(config.method),
        "model": {
            "depth": int(m.depth),
            "width_multiplier": int(m.width_multiplier),
            "mlp_hidden_size": int(m.mlp_hidden_size),
            "projection_size": int(m.projection_size),
            "num_classes": int(m.num_classes),
            "blocks_per_group": None if m.blocks_per_group is None else list(m.blocks_per_group),
            "channels_per_group": (None if m.channels_per_group is None
                                   else list(m.channels_per_group)),
        },
    }
    if has_discovery_network(config):
        signature["discovery_network"] = "ema"
    return signature


def has_discovery_network(config: Any) -> bool:
    """True when the learned masks' discovery network is its own EMA (in the TrainState)."""
    return config.masks.source == "learned" and config.masks.learned.network == "ema"
