"""Loading experiment configs as the train CLI does, and one-line errors for bad ones.

``--config=FILE.py[:ARG]`` and ``--config.KEY=VALUE`` are ml-collections' ``config_flags``;
this module adds what a user needs when they are wrong: a missing file, a bad ``:ARG``, an
unknown key (with the nearest existing one) or a bad value is a `ConfigError` whose message
is one line naming the file, argument or key, instead of a traceback or a dump of the config.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_dict

from detcon_jax.config import ConfigError
from detcon_jax.configs.args import ConfigArgError

__all__ = ["apply_overrides", "load", "parse_flags"]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _config_spec(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=SPEC`` / ``--name SPEC`` in ``argv`` (the last one, as absl)."""
    spec = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for prefix in (f"--{name}", f"-{name}"):
            if arg.startswith(prefix + "="):
                spec = arg[len(prefix) + 1:]
            elif arg == prefix and i + 1 < len(argv):
                spec = argv[i + 1]
    return spec


def _override_keys(argv: Sequence[str], name: str) -> list[str]:
    """The dotted keys of ``--name.KEY[=VALUE]`` (and ``--noname.KEY``) in ``argv``."""
    keys = []
    for arg in argv:
        if arg == "--":
            break
        flag = arg.lstrip("-").split("=", 1)[0]
        for prefix in (f"{name}.", f"no{name}."):
            if arg.startswith("-") and flag.startswith(prefix):
                keys.append(flag[len(prefix):])
                break
    return keys


def _flat_keys(node: config_dict.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key in node.keys():
        value = node[key]
        keys.append(prefix + key)
        if isinstance(value, config_dict.ConfigDict):
            keys.extend(_flat_keys(value, f"{prefix}{key}."))
    return keys


def _check_key(config: config_dict.ConfigDict, key: str) -> None:
    """Raises `ConfigError` naming ``key`` (and its nearest existing key) if it does not exist."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            break
        node = node[part]
    else:
        return
    near = difflib.get_close_matches(key, _flat_keys(config), n=1, cutoff=0.6)
    if not near:  # a typo in the last part only: compare the leaf names
        leaves = {k.rsplit(".", 1)[-1]: k for k in _flat_keys(config)}
        match = difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=1, cutoff=0.6)
        near = [leaves[m] for m in match]
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    raise ConfigError(f"unknown config key '{key}'{hint}")


def apply_overrides(config: config_dict.ConfigDict, overrides: Mapping[str, Any]
                    ) -> config_dict.ConfigDict:
    """``config`` with ``overrides`` (dotted key -> value) set in place; returns it.

    Raises:
      ConfigError: an unknown key (with the nearest existing one) or a value of another type.
    """
    for key, value in overrides.items():
        _check_key(config, key)
        try:
            config.update_from_flattened_dict({key: value})
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"config key '{key}': {_one_line(e)}") from e
    return config


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> config_dict.ConfigDict:
    """The config of ``--config=spec`` (``FILE.py[:ARG]``) with ``overrides``, locked.

    The same file and argument the train CLI reads, e.g.
    ``load('experiments/detcon_b_camvid.py:fh', {'data.path': '/data/camvid/train'})``.

    Raises:
      ConfigError: a missing or broken file, a bad argument, an unknown key or a bad value;
        the message is one line naming it.
    """
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config={spec}: config file not found: {path}")
    try:
        module_spec = importlib.util.spec_from_file_location(
            f"detcon_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        get_config = module.get_config
    except Exception as e:  # any error in the user's file: name the file, keep the chain
        raise ConfigError(f"--config={spec}: cannot load {path}: {type(e).__name__}: "
                          f"{_one_line(e)}") from e
    try:
        config = get_config(arg) if colon else get_config()
    except ConfigArgError as e:
        raise ConfigError(f"--config={spec}: {_one_line(e)}") from e
    except Exception as e:
        raise ConfigError(f"--config={spec}: get_config failed: {type(e).__name__}: "
                          f"{_one_line(e)}") from e
    if not isinstance(config, config_dict.ConfigDict):
        raise ConfigError(f"--config={spec}: get_config() returned {type(config).__name__}, "
                          "not a ConfigDict")
    config.lock()
    return apply_overrides(config, overrides or {})


def _diagnose(error: BaseException, argv: Sequence[str], name: str) -> str:
    """One line for an exception of absl/config_flags parsing ``argv``."""
    spec = _config_spec(argv, name)
    if spec is not None:
        try:
            config = load(spec)
            for key in _override_keys(argv, name):
                _check_key(config, key)
        except ConfigError as e:
            return str(e)
    text = _one_line(error).replace('"', "")
    value = re.match(rf"flag --{re.escape(name)}\.([\w.]+)=(.*?): (.*)$", text)
    if value:  # a value its key's type cannot parse
        key, given, reason = value.groups()
        return f"config key '{key}': bad value {given!r} ({reason})"
    bad = [a for a in argv[1:] if a.startswith(f"--{name}.")]
    where = f" (in {' '.join(bad)})" if bad else ""
    return f"bad flag: {type(error).__name__}: {text}{where}"


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues | None = None, *,
                name: str = "config") -> list[str]:
    """absl flag parsing of ``argv`` (a ``config_flags`` flag ``name`` among the flags), with
    every flag or config error raised as a one-line `ConfigError`.

    Use it as ``app.run(main, flags_parser=...)``'s parser. Returns the positional arguments.
    """
    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        rest = flag_values(list(argv))
        value = flag_values[name].value
        # config_flags defers a file it cannot read to the first access of the config.
        if value is not None and not isinstance(value, config_dict.ConfigDict):
            value.keys()
            raise TypeError(f"--{name}: get_config() returned {type(value).__name__}")
        return rest
    except Exception as e:  # config_flags raises KeyError/AttributeError/TypeError/OSError
        raise ConfigError(_diagnose(e, argv, name)) from None
