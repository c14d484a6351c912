"""Demo: DetCon-B with Felzenszwalb masks on the photos bundled with scikit-image.

A ResNet-18 at 128 px (a 4x4 feature grid), batch 8, 200 steps: about 3 minutes on an idle
2-core CPU (up to ~10 when the cores are shared), no data to download. The loss (mean over
each 10 steps, logged to the console, ``WORKDIR/metrics.jsonl`` and TensorBoard under
``WORKDIR/tensorboard``) goes down visibly: on our 2-core machine from 2.22 over the first 10
steps to 1.58-1.73 from step 100 on.

Run:
    python -m detcon_jax.train --config=experiments/demo.py --workdir=/tmp/detcon_demo
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    """Returns the demo configuration (schema: see ``detcon_jax/config.py``)."""
    config = config_dict.ConfigDict()
    config.method = "detcon_b"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=18,
        width_multiplier=1,
        mlp_hidden_size=256,
        projection_size=64,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=0,  # the bundled photos have no labels
        blocks_per_group=config_dict.placeholder(tuple),
        channels_per_group=config_dict.placeholder(tuple),
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
        # Scaled by batch/256: 8 images give the learning rate the official recipe reaches
        # at batch 4096 (0.2 x 4096/256 = 3.2); at 0.2 x 8/256 the demo would barely move.
        base_learning_rate=102.4,
        weight_decay=1.5e-6,
        momentum=0.9,
        trust_coefficient=1e-3,
        base_ema=0.99,
        warmup_epochs=config_dict.placeholder(int),
    ))
    config.data = config_dict.ConfigDict(dict(
        source="skimage",
        path="",
        split="train",
        tfds_name="",
        image_size=128,
        num_examples=config_dict.placeholder(int),
        synthetic_num_images=64,
        shuffle_buffer=16,
        cache=True,  # Felzenszwalb runs once per photo
        deterministic=True,
        # The bundled photos are ~512 px and a 128 px crop sees a 4x4 grid: smaller
        # segments than ImageNet's defaults give each crop several distinct regions.
        fh_scale=200.0,
        fh_min_size=200,
    ))
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 8
    config.num_epochs = 178  # 9 photos -> 200 steps (1 of warm-up)
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=100, keep=2))
    config.log_every_steps = 10
    return config
