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
* ``random:WORKDIR``: the online encoder of that training run's step 0, i.e. the run's own
  architecture (from ``WORKDIR/config.json``) initialised exactly as `step.create_train_state`
  does with the run's seed: the random baseline that matches a trained encoder.

Extraction runs on a mesh of all devices of all processes (`detcon_jax.sharding`, as
training): variables replicated, each host's batch rows sharded over its devices, features
returned per host. `extract` streams them to a sink (a `cache.ShardWriter` on disk, or
memory) with a tqdm progress bar (total and ETA).

The encoder (``model.ResNet``) takes already-normalised images; the returned backbone takes
images in [0, 1] and applies the ImageNet mean/std itself, as ``DetConNetwork`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from detcon_jax import model as model_lib
from detcon_jax import paths, sharding
from detcon_jax.evaluate.cache import MemorySink

__all__ = [
    "Backbone",
    "MeshForward",
    "any_host",
    "extract",
    "host_rows",
    "progress_bar",
    "infer_resnet_structure",
    "load_backbone",
    "normalize_images",
    "progress",
]

Variables = dict[str, Any]


def progress(message: str) -> None:
    """One progress line on stderr (flushed: the evaluators run for minutes)."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def progress_bar(total: int | None, description: str, unit: str = "img"):
    """A tqdm bar on stderr with total and ETA (process 0 only; sparse when not a terminal)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=f"[evaluate] {description}", unit=unit, file=sys.stderr,
                mininterval=0.5 if interactive else 15.0, dynamic_ncols=interactive,
                disable=jax.process_index() != 0)


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

    def with_output_stride(self, output_stride: int) -> Backbone:
        """This backbone with its ResNet at ``output_stride`` (same variables: see
        `model.ResNet`); ``self`` when it already is."""
        if output_stride == self.module.output_stride:
            return self
        module = self.module.clone(output_stride=output_stride)
        module.group_strides()  # validates output_stride
        return Backbone(module, self.variables, {**self.info, "output_stride": output_stride})

    @functools.cached_property
    def _eval_fn(self) -> Callable[[Variables, jax.Array], jax.Array]:
        return jax.jit(lambda v, x: self.apply(v, x, train=False)[0])

    def __call__(self, images: Any) -> jax.Array:
        return self._eval_fn(self.variables, jnp.asarray(images))

    def on_mesh(self, *, pool: bool = True) -> MeshForward:
        """The `MeshForward` of this backbone over all devices (built once per ``pool``)."""
        forwards = self.__dict__.setdefault("_mesh_forwards", {})
        if pool not in forwards:
            forwards[pool] = MeshForward(self, pool=pool)
        return forwards[pool]

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the structure and every variable: the backbone's identity in caches."""
        structure: Any = self.module.structure()
        if self.module.output_stride != 32:  # stride-32 fingerprints stay as they were
            structure = [structure, self.module.output_stride]
        digest = hashlib.sha256(json.dumps(structure, sort_keys=True, default=str).encode())
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.variables):
            value = np.asarray(jax.device_get(leaf))
            digest.update(f"{jax.tree_util.keystr(path)}{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()


class MeshForward:
    """Eval-mode features of a `Backbone` on a mesh of every device of every process.

    ``forward(local_images)`` takes this host's rows ``[b, H, W, 3]`` (``b`` a multiple of
    the local device count; the global batch is ``b * process_count``) and returns this
    host's features as numpy, pooled ``[b, C]`` or maps ``[b, h, w, C]``. The variables are
    replicated once; every host must call it the same number of times (collectives).

    ``fingerprint`` is the backbone's, so `MeshForward` can stand wherever a cache key is
    needed; wrap it (e.g. to count forwards) by any callable with a ``fingerprint``.
    """

    def __init__(self, backbone: Backbone, *, pool: bool = True,
                 mesh: jax.sharding.Mesh | None = None) -> None:
        self.mesh = mesh or sharding.make_mesh()
        self.pool = pool
        self.fingerprint = backbone.fingerprint
        replicated = sharding.replicated(self.mesh)
        self.variables = jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), replicated,
                                                   lambda index, x=x: np.asarray(x)[index]),
            backbone.variables)

        def forward(variables, images):
            out = backbone.apply(variables, images, train=False)[0]
            return jnp.mean(out, axis=(1, 2)) if pool else out

        self._fn = jax.jit(forward, in_shardings=(replicated, sharding.batch_sharding(self.mesh)),
                           out_shardings=sharding.batch_sharding(self.mesh))

    def __call__(self, local_images: Any) -> np.ndarray:
        images = sharding.global_batch({"image": np.asarray(local_images, np.float32)},
                                       self.mesh)["image"]
        return host_rows(self._fn(self.variables, images))


def host_rows(array: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in the order it passed them in."""
    shards = {}
    for shard in array.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)  # replicas: one copy
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


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


def _step0_backbone(workdir: str) -> tuple[model_lib.ResNet, Variables]:
    """The online encoder of a training run's step 0 (its config, its seed)."""
    import ml_collections
    import optax

    from detcon_jax import step as step_lib

    if not paths.as_path(workdir).is_dir():
        raise ValueError(f"backbone 'random:{workdir}': expected random:DEPTH, "
                         f"random:DEPTHxWIDTH, random:tiny or random:WORKDIR (no directory "
                         f"{workdir})")
    config_path = paths.as_path(workdir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"random:{workdir}: {config_path} does not exist (random:WORKDIR "
                                f"needs a training workdir)")
    try:
        config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
        step_lib.make_network(config)
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"{config_path}: not a training config ({err})") from err
    state = jax.jit(lambda: step_lib.create_train_state(
        config, jax.random.PRNGKey(config.seed), optimizer=optax.identity()))()
    variables = {"params": state.online_params["encoder"],
                 "batch_stats": state.online_batch_stats["encoder"]}
    structure = infer_resnet_structure(variables["params"], str(config_path))
    return model_lib.ResNet(**structure), variables


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
      source: a training workdir / orbax checkpoint directory, a Haiku ``.npy`` file,
        ``random:DEPTH`` / ``random:DEPTHxWIDTH`` / ``random:tiny``, or ``random:WORKDIR``
        (that run's step-0 online encoder; ``seed`` is not used, the run's own is).
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
    random_workdir = (source.startswith("random:")
                      and not re.fullmatch(r"random:(tiny|\d+)(x\d+)?", source))
    if random_workdir:
        workdir = source[len("random:"):]
        module, variables = _step0_backbone(workdir)
        info.update(kind="random", step=0, workdir=workdir)
    elif location is None:
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


def any_host(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (every process must call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def extract(apply_fn: Callable[[Any], Any], dataset: Iterable[Mapping[str, Any]], *,
            pool: bool = True, num_examples: int | None = None, description: str = "features",
            total: int | None = None, sink: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs ``apply_fn`` over a data set of batches; returns ``(features, labels)``.

    Args:
      apply_fn: images ``[B, H, W, 3]`` in [0, 1] -> features: a `Backbone` (feature maps,
        run on the mesh through `MeshForward`), a `MeshForward`, or any callable (used as
        is; its output is pooled when ``pool`` and 4-D).
      dataset: a ``tf.data.Dataset`` (iterated as numpy) or any iterable of dicts with
        ``image``, ``label`` and optionally ``valid`` (padding rows are dropped). With
        several processes, each passes its own shard; all keep calling the forward until
        every host is done (a finished host feeds all-padding batches).
      pool: global average pool to ``[N, C]`` (classification); False keeps the maps
        ``[N, h, w, C]`` (segmentation).
      num_examples: stop after this many examples (required for endless training streams).
      description: name shown on the progress bar.
      total: images this host will see (the bar's total and ETA; default ``num_examples``).
      sink: where rows go (``add(features, labels, order)``, ``close()``), e.g. a
        `cache.ShardWriter`; default in memory.

    Returns:
      float32 features and the matching labels as numpy arrays in data-set order, or None
      when a ``sink`` was given (read the rows from it).
    """
    if isinstance(apply_fn, Backbone):
        apply_fn = apply_fn.on_mesh(pool=pool)
    elif isinstance(apply_fn, MeshForward) and apply_fn.pool != pool:
        raise ValueError(f"{description}: the forward pools={apply_fn.pool}, asked pool={pool}")
    batches = iter(dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator")
                   else dataset)
    collect = sink is None
    sink = MemorySink() if sink is None else sink
    count = position = 0
    template = None
    bar = progress_bar(total or num_examples, description)
    while True:
        batch = next(batches, None)
        if num_examples is not None and count >= num_examples:
            batch = None
        if not any_host(batch is not None):
            break
        if batch is None:  # this host is done, another is not: feed padding
            batch = {k: np.zeros_like(v) for k, v in template.items()}
            batch["valid"] = np.zeros(len(batch["label"]), bool)
        template = template or batch
        out = np.asarray(apply_fn(batch["image"]), np.float32)
        if pool and out.ndim == 4:
            out = out.mean(axis=(1, 2))
        label = np.asarray(batch["label"])
        keep = np.asarray(batch.get("valid", np.ones(len(label), bool)), bool)
        if num_examples is not None:
            keep &= np.cumsum(keep) <= num_examples - count
        order = (position + np.arange(int(keep.sum()))) * jax.process_count() + \
            jax.process_index()
        sink.add(out[keep], label[keep], order)
        count += int(keep.sum())
        position += int(keep.sum())
        bar.update(int(keep.sum()))
    bar.close()
    sink.close()
    if count == 0 and jax.process_count() == 1:
        raise ValueError(f"{description}: the data set yielded no examples")
    return sink.arrays() if collect else None
