"""Smoke-test configuration: generated data, tiny ResNet-18, 32 px, a few steps.

Seconds per step on a laptop CPU; the tests drive the CLI with it.

Run:
    python -m detcon_jax.train --config=experiments/smoke.py --workdir=/tmp/detcon_smoke
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    """Returns the smoke-test configuration (schema: see ``detcon_jax/config.py``)."""
    config = config_dict.ConfigDict()
    config.method = "detcon_b"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=18,
        width_multiplier=1,
        mlp_hidden_size=64,
        projection_size=32,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=10,
        # A tiny ResNet-18 (one basic block of 16 channels per group) keeps compiles short.
        blocks_per_group=(1, 1, 1, 1),
        channels_per_group=(16, 16, 16, 16),
    ))
    config.masks = config_dict.ConfigDict(dict(
        source="fh",
        num_samples=16,
        max_mask_id=256,
        grid_size=4,
        fh_index=0,
    ))
    # The official loss; its ablation switches: docs/experiments.md, "Loss ablations".
    config.loss = config_dict.ConfigDict(dict(
        temperature=0.1, negatives="global", negatives_group_size=config_dict.placeholder(int),
        same_image_negatives=True, cross_view=True))
    config.optim = config_dict.ConfigDict(dict(
        base_learning_rate=0.2,
        weight_decay=1.5e-6,
        momentum=0.9,
        trust_coefficient=1e-3,
        base_ema=0.996,
        warmup_epochs=config_dict.placeholder(int),
    ))
    config.data = config_dict.ConfigDict(dict(
        source="synthetic",
        path="",
        split="train",
        tfds_name="",
        image_size=32,
        num_examples=config_dict.placeholder(int),
        synthetic_num_images=64,
        shuffle_buffer=64,
        cache=True,
        deterministic=True,
        fh_scale=1000.0,
        fh_min_size=1000,
    ))
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 8
    config.num_epochs = 1
    config.num_steps = 4
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=2, keep=2))
    config.log_every_steps = 1
    return config
