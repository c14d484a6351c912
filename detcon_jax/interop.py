"""Haiku <-> Flax parameter mapping for the ResNet encoder, and import of Haiku checkpoints.

Naming rules (Haiku module path ``root/~/a/~/b`` <-> Flax nested path ``a/b``, root dropped):

- ``w`` -> ``kernel`` (same layout: HWIO for convs, [in, out] for linears),
- ``b`` -> ``bias``, ``scale`` -> ``scale``, ``offset`` -> ``bias`` (BatchNorm parameters
  are ``[1, 1, 1, C]`` in Haiku and ``[C]`` in Flax),
- state ``X/~/mean_ema`` ``average`` -> ``batch_stats X/mean``, ``X/~/var_ema`` ``average``
  -> ``batch_stats X/var``, their ``counter`` -> ``batch_stats X/counter``; Haiku's
  ``hidden`` (the biased EMA) is implied by ``average`` and ``counter`` and is not kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from detcon_jax import model as model_lib
from detcon_jax import paths

_SEP = '/~/'
_PARAM_TO_FLAX = {'w': 'kernel', 'b': 'bias', 'scale': 'scale', 'offset': 'bias'}
_LEAF_TO_HAIKU = {'kernel': 'w', 'bias': 'b'}
_EMA_TO_FLAX = {'mean_ema': 'mean', 'var_ema': 'var'}
_BN_MODULE = re.compile(r'(^|/)(initial_batchnorm|batchnorm_\d+|shortcut_batchnorm|batch_norm)$')

Variables = dict[str, Any]


def _is_batchnorm(flax_module: str) -> bool:
    """Whether a Flax module path (``a/b``) names a BatchNorm (its ``bias`` is ``offset``)."""
    return bool(_BN_MODULE.search(flax_module))


def flax_key_to_haiku(collection: str, flax_path: str, *, root: str) -> str:
    """Names the Haiku ``module/name`` that a Flax ``collection``, ``a/b/leaf`` maps to."""
    module, leaf = flax_path.rsplit('/', 1)
    hk_module = _SEP.join([root, *module.split('/')])
    if collection == 'batch_stats':
        ema = {'mean': 'mean_ema', 'var': 'var_ema', 'counter': 'mean_ema'}[leaf]
        return f'{hk_module}{_SEP}{ema}/{"counter" if leaf == "counter" else "average"}'
    if leaf == 'bias' and _is_batchnorm(module):
        return f'{hk_module}/offset'
    return f'{hk_module}/{_LEAF_TO_HAIKU.get(leaf, leaf)}'


def _split_root(module: str, where: str) -> tuple[str, list[str]]:
    # Haiku joins children built in a constructor with '/~/' and those built in a method
    # (e.g. the official MLP's layers) with '/'; both are one level of nesting in Flax.
    parts = re.split(r'/~/|/', module)
    if len(parts) < 2:
        raise ValueError(f'{where}: Haiku module {module!r} has no root (expected "root/~/...")')
    return parts[0], parts[1:]


def haiku_to_flax(hk_params: Mapping[str, Mapping[str, Any]],
                  hk_state: Mapping[str, Mapping[str, Any]] | None = None, *,
                  where: str = 'checkpoint') -> Variables:
    """Maps Haiku ResNet ``params`` (and ``state``) to Flax ``{'params', 'batch_stats'}``.

    All modules must share one root (e.g. ``res_net50``, or ``projector`` for an MLP head),
    which is dropped. Raises a ValueError naming the first key that has no Flax
    counterpart; ``where`` prefixes it.
    """
    params: dict[tuple[str, ...], np.ndarray] = {}
    stats: dict[tuple[str, ...], np.ndarray] = {}
    roots = set()
    for module in sorted(hk_params):
        root, path = _split_root(module, where)
        roots.add(root)
        bn = _is_batchnorm('/'.join(path))
        for name, value in hk_params[module].items():
            if name not in (('scale', 'offset') if bn else ('w', 'b')):
                raise ValueError(f'{where}: unexpected Haiku key {module}/{name}')
            value = np.asarray(value)
            if bn:
                value = value.reshape(-1)
            params[(*path, _PARAM_TO_FLAX[name])] = value
    counters: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
    for module in sorted(hk_state or {}):
        root, path = _split_root(module, where)
        roots.add(root)
        if path[-1] not in _EMA_TO_FLAX:
            raise ValueError(f'{where}: unexpected Haiku state {module}')
        owner = tuple(path[:-1])
        for name, value in hk_state[module].items():
            if name == 'average':
                stats[(*owner, _EMA_TO_FLAX[path[-1]])] = np.asarray(value).reshape(-1)
            elif name == 'counter':
                key = f'{module}/counter'
                value = np.asarray(value, np.int32).reshape(())
                if owner in counters and counters[owner][1] != value:
                    raise ValueError(f'{where}: {key} = {value} disagrees with '
                                     f'{counters[owner][0]} = {counters[owner][1]}')
                counters[owner] = (key, value)
            elif name != 'hidden':
                raise ValueError(f'{where}: unexpected Haiku key {module}/{name}')
    for owner, (_, value) in counters.items():
        stats[(*owner, 'counter')] = value
    if len(roots) > 1:
        raise ValueError(f'{where}: expected one Haiku root module, found {sorted(roots)}')
    return {'params': traverse_util.unflatten_dict(params),
            'batch_stats': traverse_util.unflatten_dict(stats)}


def flax_to_haiku(variables: Mapping[str, Any], *, root: str = 'res_net50',
                  decay: float = 0.9) -> tuple[dict[str, dict[str, np.ndarray]],
                                               dict[str, dict[str, np.ndarray]]]:
    """Inverse of ``haiku_to_flax``: ResNet ``{'params', 'batch_stats'}`` -> Haiku (params, state).

    BatchNorm parameters and averages get Haiku's ``[1, 1, 1, C]`` shape. Haiku's ``hidden``
    is rebuilt from the debiased average as ``average * (1 - decay**counter)``.
    """
    hk_params: dict[str, dict[str, np.ndarray]] = {}
    hk_state: dict[str, dict[str, np.ndarray]] = {}
    for path, value in traverse_util.flatten_dict(dict(variables['params'])).items():
        module = '/'.join(path[:-1])
        hk_key = flax_key_to_haiku('params', '/'.join(path), root=root)
        hk_module, name = hk_key.rsplit('/', 1)
        value = np.asarray(value)
        if _is_batchnorm(module):
            value = value.reshape(1, 1, 1, -1)
        hk_params.setdefault(hk_module, {})[name] = value
    stats = traverse_util.flatten_dict(dict(variables.get('batch_stats', {})))
    for path, value in stats.items():
        if path[-1] == 'counter':
            continue
        owner, leaf = path[:-1], path[-1]
        counter = np.asarray(stats.get((*owner, 'counter'), 0), np.int32)
        average = np.asarray(value, np.float32).reshape(1, 1, 1, -1)
        hidden = average * np.float32(1.0 - np.power(np.float32(decay), counter))
        hk_module = _SEP.join([root, *owner, 'mean_ema' if leaf == 'mean' else 'var_ema'])
        hk_state[hk_module] = {'average': average, 'hidden': hidden.astype(np.float32),
                               'counter': counter.copy()}
    return hk_params, hk_state


def _as_modules(tree: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Accepts ``{module: {name: array}}`` or flat ``{'module/name': array}``."""
    modules: dict[str, dict[str, Any]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for name, leaf in value.items():
                modules.setdefault(key, {})[name] = leaf
        else:
            if '/' not in key:
                raise ValueError(f'{where}: key {key!r} is neither a module nor "module/name"')
            module, name = key.rsplit('/', 1)
            modules.setdefault(module, {})[name] = value
    return modules


def split_haiku_tree(tree: Mapping[str, Any], *, where: str = 'checkpoint'
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Splits a released-layout Haiku tree into (params, state).

    Accepts ``{'params': ..., 'state': ...}`` or one dict holding both; each part either
    nested ``{module: {name: array}}`` or flat ``{'module/name': array}``. Modules ending in
    ``/~/mean_ema`` or ``/~/var_ema`` are state.
    """
    if not isinstance(tree, Mapping):
        raise ValueError(f'{where}: expected a dict of Haiku modules, got {type(tree).__name__}')
    if set(tree) == {'params', 'state'}:
        return _as_modules(tree['params'], where), _as_modules(tree['state'], where)
    params: dict[str, dict[str, Any]] = {}
    state: dict[str, dict[str, Any]] = {}
    for module, entries in _as_modules(tree, where).items():
        is_state = module.rsplit(_SEP, 1)[-1] in _EMA_TO_FLAX
        (state if is_state else params)[module] = entries
    return params, state


def _infer_structure(params: Mapping[str, Any], root: str, where: str) -> dict[str, Any]:
    """Reads blocks, width and projections off a Flax-named ResNet parameter tree."""
    if 'kernel' not in params.get('initial_conv', {}):
        raise ValueError(f'{where}: missing checkpoint key {root}{_SEP}initial_conv/w')
    width, rem = divmod(int(np.shape(params['initial_conv']['kernel'])[-1]), 64)
    if rem or width < 1:
        raise ValueError(f'{where}: initial_conv has {width * 64 + rem} channels, '
                         f'not a multiple of 64')
    blocks, projection = [], []
    for i in range(4):
        group = params.get(f'block_group_{i}')
        if not group:
            raise ValueError(f'{where}: missing checkpoint module {root}{_SEP}block_group_{i}')
        blocks.append(sum(1 for j in range(len(group)) if f'block_{j}' in group))
        projection.append('shortcut_conv' in group.get('block_0', {}))
    bottleneck = 'conv_2' in params['block_group_0'].get('block_0', {})
    return {'blocks': tuple(blocks), 'bottleneck': bottleneck, 'width': width,
            'projection': tuple(projection)}


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
        with paths.as_path(where).open('rb') as f:
            raw = np.load(f, allow_pickle=True)
    except (OSError, ValueError) as err:
        raise ValueError(f'{where}: cannot read Haiku checkpoint ({err})') from err
    tree = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else raw
    return resnet_from_haiku_tree(tree, depth=depth, dtype=dtype, where=where)


def resnet_from_haiku_tree(tree: Mapping[str, Any], *, depth: int | None = None,
                           dtype: Any = jnp.float32, where: str = 'checkpoint'
                           ) -> tuple[model_lib.ResNet, Variables]:
    """``load_haiku_resnet`` for a tree already in memory; ``where`` names it in errors."""
    hk_params, hk_state = split_haiku_tree(tree, where=where)
    roots = {m.split(_SEP, 1)[0] for m in [*hk_params, *hk_state]}
    if len(roots) != 1:
        raise ValueError(f'{where}: expected one Haiku root module, found {sorted(roots)}')
    root = roots.pop()
    variables = haiku_to_flax(hk_params, hk_state, where=where)
    found = _infer_structure(variables['params'], root, where)
    named = re.fullmatch(r'res_net(\d+)', root)
    if depth is None and named and int(named.group(1)) in model_lib.RESNET_DEPTHS:
        # Trust the official module name, so that a damaged tree is reported key by key.
        depth = int(named.group(1))
    if depth is None:
        matches = [d for d, (blocks, bottleneck) in model_lib.RESNET_DEPTHS.items()
                   if blocks == found['blocks'] and bottleneck == found['bottleneck']]
        if not matches:
            raise ValueError(f'{where}: blocks per group {found["blocks"]} with '
                             f'bottleneck={found["bottleneck"]} match no ResNet depth')
        depth = matches[0]
    elif depth not in model_lib.RESNET_DEPTHS:
        raise ValueError(f'{where}: depth {depth} is not one of {sorted(model_lib.RESNET_DEPTHS)}')
    module = model_lib.ResNet(depth=depth, width_multiplier=found['width'], dtype=dtype,
                              use_projection=found['projection'])
    expected = jax.eval_shape(
        lambda rng, x: module.init(rng, x, train=False), jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    _check_match(expected, variables, root, where)
    variables = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32 if np.issubdtype(x.dtype, np.floating) else x.dtype),
        variables)
    return module, variables


def _natural(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', key)]


def _check_match(expected: Mapping[str, Any], got: Mapping[str, Any], root: str,
                 where: str) -> None:
    for collection in ('params', 'batch_stats'):
        want = traverse_util.flatten_dict(dict(expected[collection]), sep='/')
        have = traverse_util.flatten_dict(dict(got.get(collection, {})), sep='/')
        for keys, problem in ((set(want) - set(have), 'missing checkpoint key'),
                              (set(have) - set(want), 'unexpected checkpoint key')):
            if keys:
                first = min(keys, key=_natural)
                more = f' (and {len(keys) - 1} more)' if len(keys) > 1 else ''
                name = flax_key_to_haiku(collection, first, root=root)
                raise ValueError(f'{where}: {problem} {name}{more}')
        for key in sorted(want, key=_natural):
            if tuple(np.shape(have[key])) != tuple(want[key].shape):
                name = flax_key_to_haiku(collection, key, root=root)
                raise ValueError(f'{where}: checkpoint key {name} has shape '
                                 f'{tuple(np.shape(have[key]))}, the model expects '
                                 f'{tuple(want[key].shape)}')
