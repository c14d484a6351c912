"""Frozen backbones for evaluation: load an encoder from any source, extract its features.

Sources accepted by `load_backbone`:

* a training workdir (``WORKDIR/checkpoints/STEP/state``), its ``checkpoints`` directory or
  one step directory: the *online* encoder (``online_params['encoder']`` with its
  ``online_batch_stats``) of the newest (or a given) step of our orbax ``TrainState``;
* a released Haiku ``.npy`` ResNet checkpoint (via ``interop.load_haiku_resnet``);
* ``random:DEPTH`` (also ``random:DEPTHxWIDTH`` and ``random:tiny``): a randomly
  initialised encoder, the baseline every pretrained method should beat. Its BatchNorm
  moving averages are set to mean 0 / variance 1 (so BatchNorm is the identity up to its
  affine parameters, as in a freshly constructed torchvision model); Flax's evaluation-mode
  init would otherwise leave variance 0 and blow the activations up by 1/sqrt(eps) per layer.

The encoder (``model.ResNet``) takes already-normalised images; the returned backbone takes
images in [0, 1] and applies the ImageNet mean/std itself, as ``DetConNetwork`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from detcon_jax import model as model_lib
from detcon_jax import paths

__all__ = [
    "Backbone",
    "extract",
    "infer_resnet_structure",
    "load_backbone",
    "normalize_images",
    "progress",
]

Variables = dict[str, Any]


def progress(message: str) -> None:
    """One progress line on stderr (flushed: the evaluators run for minutes)."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def normalize_images(images: jax.Array) -> jax.Array:
    """Images in [0, 1] -> ImageNet-normalised float32 (the DetCon network's own input step)."""
    mean = jnp.asarray(model_lib.IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(model_lib.IMAGENET_STD, jnp.float32)
    return (jnp.asarray(images, jnp.float32) - mean) / std


@dataclasses.dataclass
class Backbone:
    """A ResNet encoder with its variables; calling it gives eval-mode feature maps.

    ``backbone(images)`` maps ``[B, H, W, 3]`` images in [0, 1] to ``[B, h, w, C]`` float32
    features in evaluation mode (BatchNorm moving averages), jitted with the variables as an
    argument (not baked in as constants). `apply` is the pure function for fine-tuning.
    """

    module: model_lib.ResNet
    variables: Variables
    info: dict[str, Any]

    def apply(self, variables: Variables, images: jax.Array, *, train: bool
              ) -> tuple[jax.Array, Variables]:
        """Pure forward: returns ``(features, new_batch_stats)`` (unchanged when not train)."""
        x = normalize_images(images)
        if train:
            features, updates = self.module.apply(variables, x, train=True,
                                                  mutable=["batch_stats"])
            return features.astype(jnp.float32), updates["batch_stats"]
        features = self.module.apply(variables, x, train=False)
        return features.astype(jnp.float32), variables["batch_stats"]

    @functools.cached_property
    def _eval_fn(self) -> Callable[[Variables, jax.Array], jax.Array]:
        return jax.jit(lambda v, x: self.apply(v, x, train=False)[0])

    def __call__(self, images: Any) -> jax.Array:
        return self._eval_fn(self.variables, jnp.asarray(images))


# ---------------------------------------------------------------------------------------------
# Structure of a Flax ResNet from its parameter tree.


def infer_resnet_structure(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """ResNet keyword arguments that rebuild the encoder whose ``params`` these are.

    Reads blocks per group, bottleneck or basic blocks, channels, width multiplier and
    projection shortcuts from the names and shapes, so that any trained variant (including
    the tiny test ResNet) loads without a config.
    """
    try:
        stem = int(np.shape(params["initial_conv"]["kernel"])[-1])
        blocks, channels, projection = [], [], []
        for i in range(4):
            group = params[f"block_group_{i}"]
            num = sum(1 for j in range(len(group)) if f"block_{j}" in group)
            block = group["block_0"]
            bottleneck = "conv_2" in block
            last = block["conv_2" if bottleneck else "conv_1"]["kernel"]
            blocks.append(num)
            channels.append(int(np.shape(last)[-1]))
            projection.append("shortcut_conv" in block)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{where}: encoder parameters are not a detcon_jax ResNet "
                         f"(missing {err})") from err
    if stem % 64:
        raise ValueError(f"{where}: stem conv has {stem} channels, not a multiple of 64")
    width = stem // 64
    if any(c % width for c in channels):
        raise ValueError(f"{where}: channels {channels} do not fit width multiplier {width}")
    blocks_t = tuple(blocks)
    depth = next((d for d, (b, bn) in model_lib.RESNET_DEPTHS.items()
                  if b == blocks_t and bn == bottleneck), 0)
    return {"depth": depth, "width_multiplier": width, "blocks_per_group": blocks_t,
            "channels_per_group": tuple(c // width for c in channels),
            "bottleneck": bottleneck, "use_projection": tuple(projection)}


def _check_variables(module: model_lib.ResNet, variables: Variables, where: str) -> None:
    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                  train=False))
    for collection in ("params", "batch_stats"):
        want = jax.tree_util.tree_flatten_with_path(expected[collection])[0]
        have = dict(jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0])
        for path, leaf in want:
            if path not in have:
                raise ValueError(f"{where}: {collection}{jax.tree_util.keystr(path)} missing")
            if tuple(np.shape(have[path])) != tuple(leaf.shape):
                raise ValueError(f"{where}: {collection}{jax.tree_util.keystr(path)} has shape "
                                 f"{np.shape(have[path])}, expected {leaf.shape}")


# ---------------------------------------------------------------------------------------------
# Sources.


def _random_backbone(spec: str, seed: int) -> tuple[model_lib.ResNet, Variables]:
    match = re.fullmatch(r"random:(tiny|\d+)(?:x(\d+))?", spec)
    if not match:
        raise ValueError(f"backbone {spec!r}: expected random:DEPTH, random:DEPTHxWIDTH or "
                         f"random:tiny")
    width = int(match.group(2) or 1)
    if match.group(1) == "tiny":
        module = model_lib.ResNet(depth=18, width_multiplier=width, **model_lib.TINY_RESNET)
    else:
        depth = int(match.group(1))
        if depth not in model_lib.RESNET_DEPTHS:
            raise ValueError(f"backbone {spec!r}: depth {depth} is not one of "
                             f"{sorted(model_lib.RESNET_DEPTHS)}")
        module = model_lib.ResNet(depth=depth, width_multiplier=width)
    variables = jax.jit(lambda key: module.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(seed))
    variables = dict(variables)
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if jax.tree_util.keystr(path).endswith("['var']")
        else jnp.zeros_like(x), variables["batch_stats"])
    return module, variables


def _resolve_state_dir(path: str, step: int | None) -> tuple[epath.Path, int | None]:
    """``path`` (workdir, checkpoints dir, step dir or state dir) -> (state item dir, step).

    Only complete checkpoints count (`checkpoint.complete_steps`): an interrupted save, e.g.
    a step in a bucket without its commit file, is never read.
    """
    from detcon_jax import checkpoint

    root = paths.as_path(path)
    step_dir = None
    if root.name == "state" and root.is_dir():
        step_dir = root.parent
    elif (root / "state").is_dir():
        step_dir = root
    if step_dir is not None:
        if not step_dir.name.isdigit():
            return step_dir / "state", None
        if int(step_dir.name) not in checkpoint.complete_steps(step_dir.parent):
            raise FileNotFoundError(f"{step_dir}: not a complete checkpoint (an interrupted "
                                    f"save?); give its directory to read the newest complete "
                                    f"one")
        return step_dir / "state", int(step_dir.name)
    for directory in (root, root / "checkpoints"):
        steps = checkpoint.complete_steps(directory)
        if steps:
            chosen = steps[-1] if step is None else step
            if chosen not in steps:
                raise FileNotFoundError(f"{directory}: no checkpoint for step {step} "
                                        f"(have {steps})")
            return directory / str(chosen) / "state", chosen
    raise FileNotFoundError(f"{root}: no complete orbax checkpoint found (expected a workdir "
                            f"with checkpoints/STEP/state)")


def _restore_encoder(path: str, step: int | None) -> tuple[Variables, dict[str, Any]]:
    import orbax.checkpoint as ocp

    state_dir, chosen = _resolve_state_dir(path, step)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(state_dir)
            tree = getattr(metadata, "item_metadata", metadata)
            tree = getattr(tree, "tree", tree)
            wanted = {k: tree[k] for k in ("online_params", "online_batch_stats")}
            # Restore only the online network, on the host's default device, whatever sharding
            # the training run had; optimiser state and target network stay on disk.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), wanted)
            restored = checkpointer.restore(
                state_dir, args=ocp.args.PyTreeRestore(
                    item=abstract, restore_args=jax.tree.map(
                        lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract),
                    partial_restore=True))
    except (KeyError, ValueError, FileNotFoundError, TypeError) as err:
        raise ValueError(f"{state_dir}: cannot restore the online network ({err})") from err
    params, stats = restored["online_params"], restored["online_batch_stats"]
    if "encoder" not in params or "encoder" not in stats:
        raise ValueError(f"{state_dir}: online network has no encoder sub-tree")
    return ({"params": params["encoder"], "batch_stats": stats["encoder"]},
            {"step": chosen, "state_dir": state_dir})


def load_backbone(source: str, *, depth: int | None = None, step: int | None = None,
                  seed: int = 0) -> tuple[Backbone, dict[str, Any]]:
    """Loads a frozen encoder; returns ``(apply_fn, info)``.

    Args:
      source: a training workdir / orbax checkpoint directory, a Haiku ``.npy`` file, or
        ``random:DEPTH`` / ``random:DEPTHxWIDTH`` / ``random:tiny``.
      depth: ResNet depth for Haiku checkpoints whose root name does not say it.
      step: checkpoint step for workdirs (default: the newest complete one).
      seed: initialisation seed for ``random:`` sources.

    Returns:
      ``apply_fn``: a `Backbone`; ``apply_fn(images in [0, 1])`` -> eval-mode feature map
      ``[B, h, w, C]``. ``info``: ``source``, ``kind`` (``random``/``haiku``/``orbax``),
      ``feature_dim``, ``structure`` and, for checkpoints, ``step``.

    Raises:
      FileNotFoundError: the path does not exist or holds no complete checkpoint.
      paths.UnreachablePathError: a remote path whose bucket cannot be reached.
      ValueError: the checkpoint does not hold a ResNet encoder of a known structure.
    """
    info: dict[str, Any] = {"source": source}
    location = None if source.startswith("random:") else paths.check_reachable(source)
    if location is None:
        module, variables = _random_backbone(source, seed)
        info["kind"] = "random"
    elif source.endswith(".npy"):
        if not location.is_file():
            raise FileNotFoundError(f"{source}: Haiku checkpoint file does not exist")
        from detcon_jax import interop

        module, variables = interop.load_haiku_resnet(source, depth=depth)
        info["kind"] = "haiku"
    else:
        if not location.exists():
            raise FileNotFoundError(f"{source}: checkpoint path does not exist")
        variables, extra = _restore_encoder(source, step)
        info.update(extra)
        info["kind"] = "orbax"
        structure = infer_resnet_structure(variables["params"], source)
        module = model_lib.ResNet(**structure)
        _check_variables(module, variables, source)
    structure = infer_resnet_structure(variables["params"], source)
    info["structure"] = structure
    info["feature_dim"] = structure["channels_per_group"][-1] * structure["width_multiplier"]
    info["depth"] = structure["depth"]
    return Backbone(module, dict(variables), info), info


# ---------------------------------------------------------------------------------------------
# Feature extraction.


@jax.jit
def _global_pool(features: jax.Array) -> jax.Array:
    return jnp.mean(features, axis=(1, 2))


def extract(apply_fn: Callable[[Any], jax.Array], dataset: Iterable[Mapping[str, Any]], *,
            pool: bool = True, num_examples: int | None = None, description: str = "features",
            log_every_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``apply_fn`` over a data set of batches; returns ``(features, labels)``.

    Args:
      apply_fn: images ``[B, H, W, 3]`` in [0, 1] -> feature map ``[B, h, w, C]`` (eval mode),
        e.g. from `load_backbone`.
      dataset: a ``tf.data.Dataset`` (iterated as numpy) or any iterable of dicts with
        ``image``, ``label`` and optionally ``valid`` (padding rows are dropped).
      pool: global average pool to ``[N, C]`` (classification); False keeps the maps
        ``[N, h, w, C]`` (segmentation).
      num_examples: stop after this many examples (required for endless training streams).
      description: name used in the progress lines.
      log_every_s: seconds between progress lines.

    Returns:
      float32 features and the matching labels as numpy arrays.
    """
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    features, labels = [], []
    count, start, last_log = 0, time.perf_counter(), time.perf_counter()
    for batch in batches:
        out = apply_fn(batch["image"])
        if pool:
            out = _global_pool(out)
        out = np.asarray(jax.device_get(out), np.float32)
        label = np.asarray(batch["label"])
        if "valid" in batch:
            keep = np.asarray(batch["valid"], bool)
            out, label = out[keep], label[keep]
        if num_examples is not None:
            out, label = out[:num_examples - count], label[:num_examples - count]
        features.append(out)
        labels.append(label)
        count += len(out)
        now = time.perf_counter()
        if now - last_log >= log_every_s:
            total = f"/{num_examples}" if num_examples else ""
            progress(f"{description}: {count}{total} images, "
                     f"{count / max(now - start, 1e-9):.1f} img/s")
            last_log = now
        if num_examples is not None and count >= num_examples:
            break
    if not features:
        raise ValueError(f"{description}: the data set yielded no examples")
    progress(f"{description}: {count} images in {time.perf_counter() - start:.1f}s")
    return np.concatenate(features), np.concatenate(labels)
