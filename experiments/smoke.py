"""Smoke-test configuration: generated data, tiny ResNet-18, 32 px, a few steps.

Seconds per step on a laptop CPU; the tests drive the CLI with it.

Run:
    python -m detcon_jax.train --config=experiments/smoke.py --workdir=/tmp/detcon_smoke
"""

from ml_collections import config_dict

from detcon_jax import configs


def get_config() -> config_dict.ConfigDict:
    """The smoke-test config: generated data, a tiny ResNet-18 at 32 px, 4 steps."""
    config = configs.get_config()
    config.model.depth = 18
    config.model.mlp_hidden_size = 64
    config.model.projection_size = 32
    config.model.num_classes = 10
    # A tiny ResNet-18 (one basic block of 16 channels per group) keeps compiles short.
    config.model.blocks_per_group = (1, 1, 1, 1)
    config.model.channels_per_group = (16, 16, 16, 16)
    config.data.source = "synthetic"
    config.data.image_size = 32
    config.data.num_examples = None
    config.data.shuffle_buffer = 64
    config.data.cache = True
    config.data.deterministic = True
    config.batch_size = 8
    config.num_epochs = 1
    config.num_steps = 4
    config.checkpoint.every_steps = 2
    config.checkpoint.keep = 2
    config.log_every_steps = 1
    return config
