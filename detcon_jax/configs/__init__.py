"""Experiment configs: the base config, config arguments, loading with one-line errors.

An experiment file (``experiments/*.py``) is the base plus its overrides::

    from detcon_jax import configs

    def get_config(arg=None):
        args = configs.parse_arg(arg, masks=configs.Choice("gt", "fh", "grid"))
        config = configs.get_config()
        config.masks.source = args.masks
        ...
        return config

- `get_config`: the official DetCon-B ImageNet config, locked (``base.py`` lists its keys).
- `parse_arg`, `Choice`, `ConfigArgError`: the ``:ARG`` of ``--config=file.py:ARG``.
- `load`: a config file as the train CLI reads it, with dotted overrides.
- `apply_overrides`: dotted overrides on a config (unknown keys named with the nearest one).
- `parse_flags`: absl flag parsing whose flag and config errors are one-line `ConfigError`s.
- `simclr`: SimCLR's ImageNet setting (``simclr.apply(config)``), shared by the DetCon-S and
  SimCLR experiments.

Only ml-collections and absl are imported: a config loads without JAX or TensorFlow.
"""

from detcon_jax.config import ConfigError
from detcon_jax.configs import simclr
from detcon_jax.configs.args import Choice, ConfigArgError, parse_arg
from detcon_jax.configs.base import get_config
from detcon_jax.configs.loading import apply_overrides, load, parse_flags

__all__ = [
    "Choice",
    "ConfigArgError",
    "ConfigError",
    "apply_overrides",
    "get_config",
    "load",
    "parse_arg",
    "parse_flags",
    "simclr",
]
