"""Renames and re-lays-out ResNet encoder weights for PyTorch: torchvision and detectron2.

Pure numpy: nothing here needs JAX, torch or detectron2. The PyTorch-side helpers
(`apply_tf_same_padding`, `add_layer1_projection`) live in ``detcon_jax.torch_resnet``, a
file that imports only torch so that it can be copied into an environment without
detcon_jax; they are re-exported here.

Flax (``detcon_jax.model.ResNet``, Haiku-mirroring names) -> torchvision ``ResNet``:

==========================================  ==============================================
Flax module                                 torchvision module
==========================================  ==============================================
``initial_conv``                            ``conv1``
``initial_batchnorm``                       ``bn1``
``block_group_{i}/block_{j}/conv_{k}``      ``layer{i+1}.{j}.conv{k+1}``
``block_group_{i}/block_{j}/batchnorm_{k}`` ``layer{i+1}.{j}.bn{k+1}``
``.../shortcut_conv``                       ``layer{i+1}.{j}.downsample.0``
``.../shortcut_batchnorm``                  ``layer{i+1}.{j}.downsample.1``
==========================================  ==============================================

Leaves: conv ``kernel`` (HWIO) -> ``weight`` (OIHW); BatchNorm ``scale`` -> ``weight``,
``bias`` -> ``bias``, ``batch_stats`` ``mean``/``var``/``counter`` -> ``running_mean``/
``running_var``/``num_batches_tracked`` (int64). Both BatchNorms use eps 1e-5; DetCon's
ResNet is v1.5 (stride on the 3x3 conv), as torchvision's ``Bottleneck``.

detectron2 names follow the conventions of its ``tools/convert-torchvision-to-d2.py``:
``stem.conv1`` (+ ``stem.conv1.norm``), ``res{i+2}.{j}.conv{k+1}`` (+ ``.norm``),
``res{i+2}.{j}.shortcut`` (+ ``.norm``), saved in a ``.pkl`` as ``{'model': {name: ndarray},
'__author__': ..., 'matching_heuristics': True}`` so that ``DetectionCheckpointer`` matches
them to ``backbone.bottom_up.*`` by suffix.

Padding: our convolutions use TF/Haiku ``SAME`` padding; PyTorch pads symmetrically. They
agree for stride 1 and for stride-2 layers on odd-sized inputs, but on even-sized inputs a
stride-2 layer with kernel k > 1 is padded ``(k//2 - 1, k//2)`` by TF and ``(k//2, k//2)``
by PyTorch, so its sampling grid moves by one input pixel (see `tf_same_padding` and
``docs/detectron2.md``). `apply_tf_same_padding` makes a torchvision model compute our
features exactly.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from detcon_jax.torch_resnet import add_layer1_projection, apply_tf_same_padding, tf_same_padding

__all__ = [
    "DETECTRON2_PICKLE_PROTOCOL",
    "TORCHVISION_RESNETS",
    "add_layer1_projection",
    "apply_tf_same_padding",
    "detectron2_name",
    "flax_to_torchvision",
    "needs_layer1_projection",
    "save_detectron2",
    "tf_same_padding",
    "to_detectron2",
    "torchvision_arch",
    "torchvision_name",
    "torchvision_to_flax",
]

# torchvision's ResNet family: name -> (blocks per group, bottleneck blocks?).
TORCHVISION_RESNETS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}

# The fully connected classifier of a torchvision ResNet is not part of the encoder.
_IGNORED_TORCHVISION = ("fc.weight", "fc.bias")

_BLOCK_LAYER = re.compile(r"(conv|batchnorm)_(\d+)|shortcut_(conv|batchnorm)")
_PARAM_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAF = {"mean": "running_mean", "var": "running_var", "counter": "num_batches_tracked"}

Variables = Mapping[str, Any]

# See save_detectron2.
DETECTRON2_PICKLE_PROTOCOL = 4


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _module_names(module: tuple[str, ...]) -> tuple[str, str]:
    """Flax module path -> (torchvision module, detectron2 module); ValueError if not a ResNet's."""
    where = "/".join(module)
    if module == ("initial_conv",):
        return "conv1", "stem.conv1"
    if module == ("initial_batchnorm",):
        return "bn1", "stem.conv1.norm"
    group = re.fullmatch(r"block_group_(\d+)", module[0]) if len(module) == 3 else None
    block = re.fullmatch(r"block_(\d+)", module[1]) if group else None
    layer = _BLOCK_LAYER.fullmatch(module[2]) if block else None
    if not layer or int(group.group(1)) > 3:
        raise ValueError(f"Flax module {where!r} is not part of a detcon_jax ResNet encoder")
    i, j = int(group.group(1)), int(block.group(1))
    tv, d2 = f"layer{i + 1}.{j}.", f"res{i + 2}.{j}."
    if layer.group(1) == "conv":
        k = int(layer.group(2)) + 1
        return f"{tv}conv{k}", f"{d2}conv{k}"
    if layer.group(1) == "batchnorm":
        k = int(layer.group(2)) + 1
        return f"{tv}bn{k}", f"{d2}conv{k}.norm"
    if layer.group(3) == "conv":
        return f"{tv}downsample.0", f"{d2}shortcut"
    return f"{tv}downsample.1", f"{d2}shortcut.norm"


def _leaf_name(collection: str, leaf: str, where: str) -> str:
    table = _PARAM_LEAF if collection == "params" else _STAT_LEAF
    if collection not in ("params", "batch_stats") or leaf not in table:
        raise ValueError(f"Flax variable {collection}/{where} has no torchvision counterpart")
    return table[leaf]


def torchvision_name(collection: str, path: tuple[str, ...]) -> str:
    """torchvision ``state_dict`` key of the Flax variable ``collection``/``path``."""
    module, _ = _module_names(tuple(path[:-1]))
    return f'{module}.{_leaf_name(collection, path[-1], "/".join(path))}'


def detectron2_name(collection: str, path: tuple[str, ...]) -> str:
    """detectron2 ResNet key (without ``backbone.bottom_up.``) of a Flax variable."""
    _, module = _module_names(tuple(path[:-1]))
    return f'{module}.{_leaf_name(collection, path[-1], "/".join(path))}'


def _to_torch_layout(collection: str, path: tuple[str, ...], value: Any) -> np.ndarray:
    value = np.asarray(value)
    if path[-1] == "kernel":
        if value.ndim != 4:
            raise ValueError(f'{collection}/{"/".join(path)}: expected an HWIO conv kernel, got '
                             f'shape {value.shape}')
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if path[-1] == "counter":
        return np.asarray(value, np.int64).reshape(())
    return np.ascontiguousarray(value.reshape(-1))


def _encoder_collections(variables: Variables) -> dict[str, Mapping[str, Any]]:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("expected ResNet encoder variables {'params', 'batch_stats'}")
    unknown = sorted(set(variables) - {"params", "batch_stats"})
    if unknown:
        raise ValueError(f"unexpected variable collection {unknown[0]!r} (expected params and "
                         f"batch_stats of a ResNet encoder)")
    return {c: variables[c] for c in ("params", "batch_stats") if c in variables}


def _convert(variables: Variables, namer) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for collection, tree in _encoder_collections(variables).items():
        for path, value in _flatten(tree).items():
            name = namer(collection, path)  # first, so a foreign module is named as such
            out[name] = _to_torch_layout(collection, path, value)
    return out


def flax_to_torchvision(variables: Variables) -> dict[str, np.ndarray]:
    """Encoder ``{'params', 'batch_stats'}`` -> torchvision ``state_dict`` (numpy values).

    The result has no ``fc.*`` entries: load it into a torchvision ResNet whose ``fc`` was
    replaced by ``torch.nn.Identity()`` (then ``strict=True`` works), or with
    ``strict=False``. Raises a ValueError naming any variable that is not part of a ResNet.
    """
    return _convert(variables, torchvision_name)


def torchvision_to_flax(state_dict: Mapping[str, Any], *, template: Variables
                        ) -> dict[str, Any]:
    """torchvision ``state_dict`` -> Flax variables shaped like ``template``.

    ``template`` gives the tree to fill (e.g. ``module.init`` output or ``jax.eval_shape``
    of it); values are numpy arrays with the template's dtypes. ``state_dict`` values may be
    numpy arrays or CPU torch tensors. ``fc.weight``/``fc.bias`` are ignored; any other
    unmatched, missing or mis-shaped key raises a ValueError naming it.
    """
    used = set(_IGNORED_TORCHVISION)
    result: dict[str, Any] = {}
    for collection, tree in _encoder_collections(template).items():
        flat: dict[tuple[str, ...], np.ndarray] = {}
        for path, leaf in _flatten(tree).items():
            name = torchvision_name(collection, path)
            if name not in state_dict:
                raise ValueError(f'state_dict: missing key {name} (for Flax '
                                 f'{collection}/{"/".join(path)})')
            used.add(name)
            value = _as_numpy(state_dict[name])
            want = tuple(leaf.shape)
            if path[-1] == "kernel":
                value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
            else:
                value = value.reshape(want) if value.size == int(np.prod(want)) else value
            if tuple(value.shape) != want:
                raise ValueError(f"state_dict: key {name} has shape {tuple(value.shape)} "
                                 f"in Flax layout, the template expects {want}")
            # np.array, not ascontiguousarray: the latter turns 0-d counters into shape (1,).
            flat[path] = np.array(value, dtype=np.dtype(leaf.dtype), order="C")
        result[collection] = _unflatten(flat)
    extra = sorted(set(state_dict) - used)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ValueError(f"state_dict: unexpected key {extra[0]}{more}")
    return result


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _structure(variables: Variables) -> dict[str, Any]:
    """Blocks per group, block type, stem width, projections and output width of an encoder."""
    params = _encoder_collections(variables)["params"]
    try:
        blocks, projection = [], []
        for i in range(4):
            group = params[f"block_group_{i}"]
            blocks.append(sum(1 for j in range(len(group)) if f"block_{j}" in group))
            projection.append("shortcut_conv" in group["block_0"])
        bottleneck = "conv_2" in params["block_group_0"]["block_0"]
        last = params["block_group_3"]["block_0"]["conv_2" if bottleneck else "conv_1"]
        return {"blocks": tuple(blocks), "bottleneck": bottleneck, "projection": projection,
                "stem": int(np.shape(params["initial_conv"]["kernel"])[-1]),
                "out_channels": int(np.shape(last["kernel"])[-1])}
    except (KeyError, TypeError) as err:
        raise ValueError(f"variables are not a detcon_jax ResNet encoder (missing {err})") from err


def needs_layer1_projection(variables: Variables) -> bool:
    """True for a basic-block encoder with a projection shortcut in its first group.

    The official DetCon torso (and ours by default) projects in the first block of every
    group; torchvision's ResNet-18/34 have no ``layer1.0.downsample`` and detectron2's
    R18/R34 no ``res2.0.shortcut``. A strict load of such an export into a stock model
    fails on those six keys and a non-strict one drops the shortcut (wrong features): add
    the projection first (`add_layer1_projection` for torchvision).
    """
    info = _structure(variables)
    return not info["bottleneck"] and info["projection"][0]


def torchvision_arch(variables: Variables, *, layer1_projection: bool = False) -> str | None:
    """Name of the torchvision constructor whose model takes these weights, or None.

    torchvision has no width multiplier, and its basic-block ResNets (18, 34) have no
    projection shortcut in ``layer1`` while DetCon's torso has one in every group, so only
    width-1 bottleneck encoders (and basic-block ones built with
    ``use_projection=(False, True, True, True)``) match a stock torchvision model exactly.
    With ``layer1_projection=True`` a basic-block encoder with a first-group projection
    matches too: it loads strictly into the named model after `add_layer1_projection`.
    """
    info = _structure(variables)
    for name, (want_blocks, want_bottleneck) in TORCHVISION_RESNETS.items():
        want_projection = [True] * 4 if want_bottleneck else [False, True, True, True]
        if layer1_projection and not want_bottleneck:
            want_projection = [info["projection"][0], True, True, True]
        if (info["blocks"] == want_blocks and info["bottleneck"] == want_bottleneck
                and info["stem"] == 64 and info["projection"] == want_projection
                and info["out_channels"] == (2048 if want_bottleneck else 512)):
            return name
    return None


def to_detectron2(variables: Variables, *, author: str = "detcon_jax") -> dict[str, Any]:
    """Encoder variables -> the ``.pkl`` payload detectron2's ``DetectionCheckpointer`` loads.

    ``{'model': {detectron2 name: ndarray}, '__author__': author, 'matching_heuristics':
    True}``; names as produced by detectron2's ``convert-torchvision-to-d2.py`` (``stem.*``,
    ``res2``..``res5``), which the checkpointer matches to ``backbone.bottom_up.*``.
    """
    return {"model": _convert(variables, detectron2_name), "__author__": author,
            "matching_heuristics": True}


def save_detectron2(payload: Mapping[str, Any], path: str) -> None:
    """Pickles a `to_detectron2` payload; detectron2 only reads this layout from ``.pkl``.

    Pickle protocol `DETECTRON2_PICKLE_PROTOCOL` (4): numpy 2 pickles arrays under protocol 5
    through ``numpy._core.numeric._frombuffer``, which numpy 1.x (still common beside
    detectron2) cannot import; protocol 4 arrays load in numpy >= 1.26 and 2.x.
    """
    if not str(path).endswith(".pkl"):
        raise ValueError(f"{path}: detectron2 reads this layout only from a file ending in .pkl")
    with open(path, "wb") as f:
        pickle.dump(dict(payload), f, protocol=DETECTRON2_PICKLE_PROTOCOL)
