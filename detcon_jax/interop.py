"""Haiku <-> Flax parameter mapping for the ResNet encoder, and import of Haiku checkpoints.

Naming rules (Haiku module path ``root/~/a/~/b`` <-> Flax nested path ``a/b``, root dropped):

- ``w`` -> ``kernel`` (same layout: HWIO for convs, [in, out] for linears),
- ``b`` -> ``bias``, ``scale`` -> ``scale``, ``offset`` -> ``bias`` (BatchNorm parameters
  are ``[1, 1, 1, C]`` in Haiku and ``[C]`` in Flax),
- state ``X/~/mean_ema`` ``average`` -> ``batch_stats X/mean``, ``X/~/var_ema`` ``average``
  -> ``batch_stats X/var``, their ``counter`` -> ``batch_stats X/counter``; Haiku's
  ``hidden`` (the biased EMA) is implied by ``average`` and ``counter`` and is not kept.

One module for the encoder and the whole training state (a little over 500 lines): both
apply the same naming rules, and the training-state mapping reuses the encoder's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from detcon_jax import model as model_lib
from detcon_jax import paths
from detcon_jax import step as step_lib

_SEP = "/~/"
_PARAM_TO_FLAX = {"w": "kernel", "b": "bias", "scale": "scale", "offset": "bias"}
_LEAF_TO_HAIKU = {"kernel": "w", "bias": "b"}
_EMA_TO_FLAX = {"mean_ema": "mean", "var_ema": "var"}
_BN_MODULE = re.compile(r"(^|/)(initial_batchnorm|batchnorm_\d+|shortcut_batchnorm|batch_norm)$")

Variables = dict[str, Any]


def _is_batchnorm(flax_module: str) -> bool:
    """Whether a Flax module path (``a/b``) names a BatchNorm (its ``bias`` is ``offset``)."""
    return bool(_BN_MODULE.search(flax_module))


def flax_key_to_haiku(collection: str, flax_path: str, *, root: str, sep: str = _SEP) -> str:
    """Names the Haiku ``module/name`` that a Flax ``collection``, ``a/b/leaf`` maps to.

    ``sep`` joins ``root`` and the sub-modules: ``'/~/'`` for modules built in a Haiku
    constructor (the ResNet torso), ``'/'`` for those built in ``__call__`` (the official
    MLP heads). A leaf directly under the root (``flax_path='kernel'``) names ``root/w``.
    """
    module, leaf = flax_path.rsplit("/", 1) if "/" in flax_path else ("", flax_path)
    hk_module = sep.join([root, *module.split("/")]) if module else root
    if collection == "batch_stats":
        ema = {"mean": "mean_ema", "var": "var_ema", "counter": "mean_ema"}[leaf]
        return f'{hk_module}{_SEP}{ema}/{"counter" if leaf == "counter" else "average"}'
    if leaf == "bias" and _is_batchnorm(module):
        return f"{hk_module}/offset"
    return f"{hk_module}/{_LEAF_TO_HAIKU.get(leaf, leaf)}"


def _split_module(module: str) -> tuple[str, list[str]]:
    # Haiku joins children built in a constructor with '/~/' and those built in a method
    # (e.g. the official MLP's layers) with '/'; both are one level of nesting in Flax.
    parts = re.split(r"/~/|/", module)
    return parts[0], parts[1:]


def _split_root(module: str, where: str) -> tuple[str, list[str]]:
    root, path = _split_module(module)
    if not path:
        raise ValueError(f'{where}: Haiku module {module!r} has no root (expected "root/~/...")')
    return root, path


def _map_to_flax(hk_params: Mapping[str, Mapping[str, Any]],
                 hk_state: Mapping[str, Mapping[str, Any]] | None,
                 path_of: Any, where: str) -> Variables:
    """Haiku modules -> Flax ``{'params', 'batch_stats'}``; ``path_of(module)`` gives the
    Flax module path (a list of names) of a Haiku module name."""
    params: dict[tuple[str, ...], np.ndarray] = {}
    stats: dict[tuple[str, ...], np.ndarray] = {}
    for module in sorted(hk_params):
        path = path_of(module)
        bn = _is_batchnorm("/".join(path))
        for name, value in hk_params[module].items():
            if name not in (("scale", "offset") if bn else ("w", "b")):
                raise ValueError(f"{where}: unexpected Haiku key {module}/{name}")
            value = np.asarray(value)
            if bn:
                value = value.reshape(-1)
            params[(*path, _PARAM_TO_FLAX[name])] = value
    counters: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
    for module in sorted(hk_state or {}):
        path = path_of(module)
        if not path or path[-1] not in _EMA_TO_FLAX:
            raise ValueError(f"{where}: unexpected Haiku state {module}")
        owner = tuple(path[:-1])
        for name, value in hk_state[module].items():
            if name == "average":
                stats[(*owner, _EMA_TO_FLAX[path[-1]])] = np.asarray(value).reshape(-1)
            elif name == "counter":
                key = f"{module}/counter"
                value = np.asarray(value, np.int32).reshape(())
                if owner in counters and counters[owner][1] != value:
                    raise ValueError(f"{where}: {key} = {value} disagrees with "
                                     f"{counters[owner][0]} = {counters[owner][1]}")
                counters[owner] = (key, value)
            elif name != "hidden":
                raise ValueError(f"{where}: unexpected Haiku key {module}/{name}")
    for owner, (_, value) in counters.items():
        stats[(*owner, "counter")] = value
    return {"params": traverse_util.unflatten_dict(params),
            "batch_stats": traverse_util.unflatten_dict(stats)}


def haiku_to_flax(hk_params: Mapping[str, Mapping[str, Any]],
                  hk_state: Mapping[str, Mapping[str, Any]] | None = None, *,
                  where: str = "checkpoint") -> Variables:
    """Maps Haiku ResNet ``params`` (and ``state``) to Flax ``{'params', 'batch_stats'}``.

    All modules must share one root (e.g. ``res_net50``, or ``projector`` for an MLP head),
    which is dropped. Raises a ValueError naming the first key that has no Flax
    counterpart; ``where`` prefixes it.
    """
    roots = {_split_root(module, where)[0] for module in [*hk_params, *(hk_state or {})]}
    if len(roots) > 1:
        raise ValueError(f"{where}: expected one Haiku root module, found {sorted(roots)}")
    return _map_to_flax(hk_params, hk_state, lambda m: _split_root(m, where)[1], where)


def flax_to_haiku(variables: Mapping[str, Any], *, root: str = "res_net50",
                  decay: float = 0.9, sep: str = _SEP, bn_rank: int = 4
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Inverse of ``haiku_to_flax``: ResNet ``{'params', 'batch_stats'}`` -> Haiku (params, state).

    BatchNorm parameters and averages get Haiku's keepdims shape (``[1, 1, 1, C]`` for
    the encoder; ``bn_rank=3`` gives the MLP heads' ``[1, 1, C]``). Haiku's ``hidden`` is
    rebuilt from the debiased average as ``average * (1 - decay**counter)``. ``sep``: see
    `flax_key_to_haiku`.
    """
    bn_shape = (1,) * (bn_rank - 1) + (-1,)
    hk_params: dict[str, dict[str, np.ndarray]] = {}
    hk_state: dict[str, dict[str, np.ndarray]] = {}
    for path, value in traverse_util.flatten_dict(dict(variables["params"])).items():
        module = "/".join(path[:-1])
        hk_key = flax_key_to_haiku("params", "/".join(path), root=root, sep=sep)
        hk_module, name = hk_key.rsplit("/", 1)
        value = np.asarray(value)
        if _is_batchnorm(module):
            value = value.reshape(bn_shape)
        hk_params.setdefault(hk_module, {})[name] = value
    stats = traverse_util.flatten_dict(dict(variables.get("batch_stats", {})))
    for path, value in stats.items():
        if path[-1] == "counter":
            continue
        owner, leaf = path[:-1], path[-1]
        counter = np.asarray(stats.get((*owner, "counter"), 0), np.int32)
        average = np.asarray(value, np.float32).reshape(bn_shape)
        hidden = average * np.float32(1.0 - np.power(np.float32(decay), counter))
        hk_module = _SEP.join([sep.join([root, *owner]),
                               "mean_ema" if leaf == "mean" else "var_ema"])
        hk_state[hk_module] = {"average": average, "hidden": hidden.astype(np.float32),
                               "counter": counter.copy()}
    return hk_params, hk_state


def _as_modules(tree: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Accepts ``{module: {name: array}}`` or flat ``{'module/name': array}``."""
    modules: dict[str, dict[str, Any]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for name, leaf in value.items():
                modules.setdefault(key, {})[name] = leaf
        else:
            if "/" not in key:
                raise ValueError(f'{where}: key {key!r} is neither a module nor "module/name"')
            module, name = key.rsplit("/", 1)
            modules.setdefault(module, {})[name] = value
    return modules


def split_haiku_tree(tree: Mapping[str, Any], *, where: str = "checkpoint"
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Splits a released-layout Haiku tree into (params, state).

    Accepts ``{'params': ..., 'state': ...}`` or one dict holding both; each part either
    nested ``{module: {name: array}}`` or flat ``{'module/name': array}``. Modules ending in
    ``/~/mean_ema`` or ``/~/var_ema`` are state.
    """
    if not isinstance(tree, Mapping):
        raise ValueError(f"{where}: expected a dict of Haiku modules, got {type(tree).__name__}")
    if set(tree) == {"params", "state"}:
        return _as_modules(tree["params"], where), _as_modules(tree["state"], where)
    params: dict[str, dict[str, Any]] = {}
    state: dict[str, dict[str, Any]] = {}
    for module, entries in _as_modules(tree, where).items():
        is_state = module.rsplit(_SEP, 1)[-1] in _EMA_TO_FLAX
        (state if is_state else params)[module] = entries
    return params, state


def _infer_structure(params: Mapping[str, Any], root: str, where: str) -> dict[str, Any]:
    """Reads blocks, width and projections off a Flax-named ResNet parameter tree."""
    if "kernel" not in params.get("initial_conv", {}):
        raise ValueError(f"{where}: missing checkpoint key {root}{_SEP}initial_conv/w")
    width, rem = divmod(int(np.shape(params["initial_conv"]["kernel"])[-1]), 64)
    if rem or width < 1:
        raise ValueError(f"{where}: initial_conv has {width * 64 + rem} channels, "
                         f"not a multiple of 64")
    blocks, projection = [], []
    for i in range(4):
        group = params.get(f"block_group_{i}")
        if not group:
            raise ValueError(f"{where}: missing checkpoint module {root}{_SEP}block_group_{i}")
        blocks.append(sum(1 for j in range(len(group)) if f"block_{j}" in group))
        projection.append("shortcut_conv" in group.get("block_0", {}))
    bottleneck = "conv_2" in params["block_group_0"].get("block_0", {})
    return {"blocks": tuple(blocks), "bottleneck": bottleneck, "width": width,
            "projection": tuple(projection)}


def load_haiku_resnet(path: str | os.PathLike, *, depth: int | None = None,
                      dtype: Any = jnp.float32) -> tuple[model_lib.ResNet, Variables]:
    """Loads an official (Haiku) ResNet checkpoint into our Flax ``ResNet``.

    ``path`` is a ``.npy`` holding a pickled dict in the released layout (Haiku module names
    such as ``res_net50/~/block_group_0/~/block_0/~/conv_0`` -> ``{w|scale|offset}``, with
    BatchNorm state ``.../~/mean_ema`` and ``.../~/var_ema``), a ``{'params', 'state'}`` split,
    or flat ``module/name`` keys. ``depth`` and the width multiplier are inferred when not
    given. Every checkpoint key must match the model and vice versa: a missing, unexpected or
    mis-shaped key raises a ValueError naming it. Returns ``(module, variables)`` with
    ``variables = {'params', 'batch_stats'}``.
    """
    where = os.fspath(path)
    try:
        # Through epath, so that the file may be a URI (gs://...); np.load reads file objects.
        with paths.as_path(where).open("rb") as f:
            raw = np.load(f, allow_pickle=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read Haiku checkpoint ({err})") from err
    tree = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else raw
    return resnet_from_haiku_tree(tree, depth=depth, dtype=dtype, where=where)


def resnet_from_haiku_tree(tree: Mapping[str, Any], *, depth: int | None = None,
                           dtype: Any = jnp.float32, where: str = "checkpoint"
                           ) -> tuple[model_lib.ResNet, Variables]:
    """``load_haiku_resnet`` for a tree already in memory; ``where`` names it in errors."""
    hk_params, hk_state = split_haiku_tree(tree, where=where)
    roots = {m.split(_SEP, 1)[0] for m in [*hk_params, *hk_state]}
    if len(roots) != 1:
        raise ValueError(f"{where}: expected one Haiku root module, found {sorted(roots)}")
    root = roots.pop()
    variables = haiku_to_flax(hk_params, hk_state, where=where)
    found = _infer_structure(variables["params"], root, where)
    named = re.fullmatch(r"res_net(\d+)", root)
    if depth is None and named and int(named.group(1)) in model_lib.RESNET_DEPTHS:
        # Trust the official module name, so that a damaged tree is reported key by key.
        depth = int(named.group(1))
    if depth is None:
        matches = [d for d, (blocks, bottleneck) in model_lib.RESNET_DEPTHS.items()
                   if blocks == found["blocks"] and bottleneck == found["bottleneck"]]
        if not matches:
            raise ValueError(f'{where}: blocks per group {found["blocks"]} with '
                             f'bottleneck={found["bottleneck"]} match no ResNet depth')
        depth = matches[0]
    elif depth not in model_lib.RESNET_DEPTHS:
        raise ValueError(f"{where}: depth {depth} is not one of {sorted(model_lib.RESNET_DEPTHS)}")
    module = model_lib.ResNet(depth=depth, width_multiplier=found["width"], dtype=dtype,
                              use_projection=found["projection"])
    expected = jax.eval_shape(
        lambda rng, x: module.init(rng, x, train=False), jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    _check_match(expected, variables, root, where)
    variables = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32 if np.issubdtype(x.dtype, np.floating) else x.dtype),
        variables)
    return module, variables


def _natural(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _check_match(expected: Mapping[str, Any], got: Mapping[str, Any], root: str,
                 where: str) -> None:
    for collection in ("params", "batch_stats"):
        want = traverse_util.flatten_dict(dict(expected[collection]), sep="/")
        have = traverse_util.flatten_dict(dict(got.get(collection, {})), sep="/")
        for keys, problem in ((set(want) - set(have), "missing checkpoint key"),
                              (set(have) - set(want), "unexpected checkpoint key")):
            if keys:
                first = min(keys, key=_natural)
                more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
                name = flax_key_to_haiku(collection, first, root=root)
                raise ValueError(f"{where}: {problem} {name}{more}")
        for key in sorted(want, key=_natural):
            if tuple(np.shape(have[key])) != tuple(want[key].shape):
                name = flax_key_to_haiku(collection, key, root=root)
                raise ValueError(f"{where}: checkpoint key {name} has shape "
                                 f"{tuple(np.shape(have[key]))}, the model expects "
                                 f"{tuple(want[key].shape)}")


# --- The whole DetCon network and the official training state ---------------------------

# Official Haiku roots of the heads (``networks.MLP(name='projector')`` and so on); they keep
# their names in Flax (``DetConNetwork``). Every other root is the encoder's torso, whatever
# its class name (``res_net50``, ``res_net_torso``, ...), and becomes ``encoder``.
_HEADS = ("projector", "predictor", "classifier")
_ENCODER = "encoder"
# The parts of an official ``ExperimentState`` as the flat ``part/module/name`` layout names
# them; ``opt_mu`` is the LARS momentum (``ScaleByLarsState.mu``), laid out like the params.
TRAIN_STATE_PARTS = ("online_params", "online_state", "target_params", "target_state", "opt_mu")


def detcon_haiku_to_flax(hk_params: Mapping[str, Mapping[str, Any]],
                         hk_state: Mapping[str, Mapping[str, Any]] | None = None, *,
                         where: str = "checkpoint") -> Variables:
    """Maps the official DetCon network (torso, ``projector``, ``predictor``, ``classifier``)
    to ``DetConNetwork``'s ``{'params', 'batch_stats'}``.

    The naming rules are those of `haiku_to_flax`; the torso's root becomes ``encoder``, the
    heads keep theirs (``projector/linear`` -> ``projector/linear``, ``classifier/w`` ->
    ``classifier/kernel``). Exactly one non-head root (the torso) is allowed.
    """
    torsos = {_split_module(m)[0] for m in [*hk_params, *(hk_state or {})]} - set(_HEADS)
    if len(torsos) > 1:
        raise ValueError(f"{where}: expected one encoder root module besides {_HEADS}, "
                         f"found {sorted(torsos)}")

    def path_of(module: str) -> list[str]:
        root, path = _split_module(module)
        return [root if root in _HEADS else _ENCODER, *path]

    return _map_to_flax(hk_params, hk_state, path_of, where)


def detcon_flax_to_haiku(variables: Mapping[str, Any], *, encoder_root: str = "res_net50",
                         decay: float = 0.9
                         ) -> tuple[dict[str, dict[str, np.ndarray]],
                                    dict[str, dict[str, np.ndarray]]]:
    """Inverse of `detcon_haiku_to_flax`: Haiku (params, state) named as the official code.

    ``encoder_root`` names the torso (``res_net50`` for the official ResNet-50). The heads'
    BatchNorm arrays get Haiku's ``[1, 1, C]`` shape (their input is ``[B, R, C]``).
    """
    hk_params: dict[str, dict[str, np.ndarray]] = {}
    hk_state: dict[str, dict[str, np.ndarray]] = {}
    stats = variables.get("batch_stats", {})
    for name, params in variables["params"].items():
        sub = {"params": params, "batch_stats": stats.get(name, {})}
        if name == _ENCODER:
            p, s = flax_to_haiku(sub, root=encoder_root, decay=decay)
        elif name in _HEADS:
            p, s = flax_to_haiku(sub, root=name, decay=decay, sep="/", bn_rank=3)
        else:
            raise ValueError(f"detcon_flax_to_haiku: unexpected module {name!r}")
        hk_params.update(p)
        hk_state.update(s)
    return hk_params, hk_state


def _parts(tree: Mapping[str, Any], where: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{part: {module: {name: array}}}`` from flat ``part/module/name`` keys or nested parts."""
    parts: dict[str, dict[str, Any]] = {}
    for key, value in tree.items():
        part, _, rest = key.partition("/")
        if part not in TRAIN_STATE_PARTS:
            raise ValueError(f"{where}: key {key!r} is not under one of {TRAIN_STATE_PARTS}")
        if rest:
            parts.setdefault(part, {})[rest] = value
        else:
            parts[part] = dict(value)
    return {part: _as_modules(entries, f"{where}: {part}") for part, entries in parts.items()}


def _check_tree(expected: Any, got: Any, describe: Any, where: str) -> None:
    """Same keys and shapes; ``describe(flat_key)`` names a key for the message."""
    want = traverse_util.flatten_dict(dict(expected), sep="/")
    have = traverse_util.flatten_dict(dict(got), sep="/")
    for keys, problem in ((set(want) - set(have), "missing key"),
                          (set(have) - set(want), "unexpected key")):
        if keys:
            first = min(keys, key=_natural)
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ValueError(f"{where}: {problem} {describe(first)}{more} for this config")
    for key in sorted(want, key=_natural):
        if tuple(np.shape(have[key])) != tuple(want[key].shape):
            raise ValueError(f"{where}: {describe(key)} has shape {tuple(np.shape(have[key]))}, "
                             f"this config expects {tuple(want[key].shape)}")


def _detcon_key_to_haiku(collection: str, flax_key: str, encoder_root: str) -> str:
    top, _, rest = flax_key.partition("/")
    if top == _ENCODER:
        return flax_key_to_haiku(collection, rest, root=encoder_root)
    return flax_key_to_haiku(collection, rest, root=top, sep="/")


def _check_hidden(modules: Mapping[str, Mapping[str, Any]], decay: float, where: str) -> None:
    """Haiku's biased ``hidden`` must follow from ``average`` and ``counter`` (we keep only
    those two), to float32 rounding of Haiku's ``average = hidden / (1 - decay**counter)``."""
    for module in sorted(modules):
        leaves = modules[module]
        if not {"hidden", "average", "counter"} <= set(leaves):
            continue
        average = np.asarray(leaves["average"], np.float64)
        counter = int(np.asarray(leaves["counter"]))
        implied = average * (1.0 - decay ** counter)
        scale = float(np.max(np.abs(implied), initial=0.0))
        if not np.allclose(leaves["hidden"], implied, rtol=2.0 ** -16, atol=2.0 ** -20 * scale):
            raise ValueError(f"{where}: {module}/hidden is not average * (1 - {decay}**counter) "
                             f"(counter {counter}): not a zero-debiased moving average with "
                             f"model.bn_decay={decay}")


def train_state_from_haiku(tree: Mapping[str, Any], config: Any, *, step: int = 0,
                           optimizer: Any = None, where: str = "checkpoint") -> Any:
    """An official DetCon-B training state as our ``step.TrainState`` for ``config``.

    ``tree`` holds the parts of the official ``ExperimentState`` (see `TRAIN_STATE_PARTS`):
    flat ``part/module/name`` keys (the layout of ``golden/step/init.npz``) or
    ``{part: {module: {name: array}}}``. Parameters, BatchNorm averages and counters and the
    LARS momentum are mapped as `detcon_haiku_to_flax` says; Haiku's ``hidden`` is implied
    by ``average`` and ``counter`` (``hidden = average * (1 - decay**counter)`` for states
    written by Haiku's zero-debiased moving average with ``config.model.bn_decay``; checked,
    a state that breaks it is refused). ``step`` is the official
    ``global_step`` of the next update: the state's step and LARS count (the official state
    does not store it). The run key comes from ``config.seed`` as in
    ``step.create_train_state``. ``optimizer`` only provides the optimizer state's structure
    (default: ``step.make_optimizer`` for ``config``).

    Every key must match the network of ``config`` and vice versa: a missing, unexpected or
    mis-shaped key raises a ValueError naming it (prefixed by ``where``).
    """
    parts = _parts(tree, where)
    if optimizer is None:
        schedules = step_lib.make_schedules(config, total_steps=max(step, 1), warmup_steps=0)
        optimizer = step_lib.make_optimizer(config, schedules)
    expected = jax.eval_shape(lambda: step_lib.create_train_state(
        config, jax.random.PRNGKey(0), optimizer=optimizer))
    with_target = expected.target_params is not None
    needed = {"online_params", "online_state", "opt_mu"}
    needed |= {"target_params", "target_state"} if with_target else set()
    for problem, names in (("missing part", needed - set(parts)),
                           ("unexpected part", set(parts) - needed)):
        if names:
            raise ValueError(f"{where}: {problem} {sorted(names)[0]} for method "
                             f"{config.method!r}")

    for part in ("online_state", "target_state"):
        _check_hidden(parts.get(part, {}), config.model.bn_decay, f"{where}: {part}")
    encoder_root = next((_split_module(m)[0] for m in parts["online_params"]
                         if _split_module(m)[0] not in _HEADS), "res_net50")

    def mapped(params_part: str, state_part: str | None) -> Variables:
        variables = detcon_haiku_to_flax(parts[params_part], parts.get(state_part),
                                         where=f"{where}: {params_part}")
        names = {"params": params_part, "batch_stats": state_part}
        shapes = {"params": expected.online_params if params_part == "opt_mu"
                  else getattr(expected, params_part)}
        if state_part:
            shapes["batch_stats"] = getattr(expected, state_part.replace("state",
                                                                         "batch_stats"))
        for collection, want in shapes.items():
            _check_tree(want, variables[collection], lambda key, c=collection: (
                f"{names[c]}/{_detcon_key_to_haiku(c, key, encoder_root)}"), where)
        return jax.tree.map(jnp.asarray, variables)

    online = mapped("online_params", "online_state")
    target = mapped("target_params", "target_state") if with_target else None
    mu = mapped("opt_mu", None)["params"]
    count = jnp.asarray(step, jnp.int32)
    opt_state = optimizer.init(online["params"])
    opt_state = optax.tree_utils.tree_set(opt_state, trace=mu)
    if optax.tree_utils.tree_get_all_with_path(opt_state, "count"):
        opt_state = optax.tree_utils.tree_set(opt_state, count=count)
    return expected.replace(
        step=count,
        online_params=online["params"],
        online_batch_stats=online["batch_stats"],
        target_params=None if target is None else target["params"],
        target_batch_stats=None if target is None else target["batch_stats"],
        opt_state=opt_state,
        rng=step_lib.init_keys(jax.random.PRNGKey(config.seed))[2],
    )


def train_state_to_haiku(state: Any, *, encoder_root: str = "res_net50",
                         decay: float = 0.9) -> dict[str, np.ndarray]:
    """Inverse of `train_state_from_haiku`: flat ``part/module/name`` numpy arrays.

    Every BatchNorm's ``mean_ema`` and ``var_ema`` get the shared counter and ``hidden =
    average * (1 - decay**counter)``; ``opt_mu`` is the LARS momentum (optax ``trace``).
    """
    flat: dict[str, np.ndarray] = {}
    mu = optax.tree_utils.tree_get(state.opt_state, "trace")
    networks = [("online", state.online_params, state.online_batch_stats)]
    if state.target_params is not None:
        networks.append(("target", state.target_params, state.target_batch_stats))
    for prefix, params, stats in networks:
        hk_params, hk_state = detcon_flax_to_haiku(
            jax.device_get({"params": params, "batch_stats": stats}),
            encoder_root=encoder_root, decay=decay)
        for part, modules in ((f"{prefix}_params", hk_params), (f"{prefix}_state", hk_state)):
            for module, leaves in modules.items():
                flat.update({f"{part}/{module}/{n}": np.asarray(v) for n, v in leaves.items()})
    hk_mu, _ = detcon_flax_to_haiku({"params": jax.device_get(mu)}, encoder_root=encoder_root)
    for module, leaves in hk_mu.items():
        flat.update({f"opt_mu/{module}/{n}": np.asarray(v) for n, v in leaves.items()})
    return flat


def load_haiku_train_state(path: str | os.PathLike, config: Any, *, step: int = 0) -> Any:
    """`train_state_from_haiku` of a file (a local path or a URI such as ``gs://...``):
    ``.npz`` with flat ``part/module/name`` keys (the layout of the golden's ``init.npz``),
    or ``.npy`` holding a pickled dict in either accepted layout."""
    from etils import epath

    where = os.fspath(path)
    try:
        with epath.Path(where).open("rb") as f:
            raw = np.load(f, allow_pickle=where.endswith(".npy"))
            if isinstance(raw, np.lib.npyio.NpzFile):
                tree = {k: raw[k] for k in raw.files}
            else:
                tree = raw.item() if raw.dtype == object else raw
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read training state ({err})") from err
    if not isinstance(tree, Mapping):
        raise ValueError(f"{where}: expected a dict of training-state parts, got "
                         f"{type(tree).__name__}")
    return train_state_from_haiku(tree, config, step=step, where=where)
