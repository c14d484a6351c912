"""BYOL baseline on ImageNet, trained by the same code as DetCon-B (ResNet-50, 224 px).

The paper (Hénaff et al., ICCV 2021, arXiv 2103.10957) builds DetCon-B on BYOL (Grill et
al., 2020) and compares the two. This config is DetCon-B's recipe with the contrastive
detection objective replaced by BYOL's: one whole-image "mask" per view (``masks.source =
'none'``) and BYOL's regression loss between the online prediction and the target projection.
Everything else is shared with ``detcon_b_imagenet.py`` and equals BYOL's published ImageNet
setting: batch 4096, LARS with base learning rate 0.2 x batch/256, weight decay 1.5e-6,
target EMA 0.996 (cosine), projector/predictor MLPs 4096 -> 256, the asymmetric BYOL
augmentations, 1000 epochs by default (warm-up ``num_epochs // 100`` epochs, derived in code),
and an online linear classifier on stop-gradient features for monitoring. BYOL itself warms up
for 10 epochs at every length; here warm-up follows the DetCon rule (equal at 1000 epochs;
``--config.optim.warmup_epochs=10`` gives BYOL's rule for shorter runs).

It reads the same TFRecords as DetCon-B (their FH masks are ignored), so both runs see the
same images.

Run:

    python -m detcon_jax.train --config=experiments/byol_imagenet.py \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/byol_1000ep

    # Shorter schedules: append --config.num_epochs=300.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    """BYOL / ImageNet config (schema: ``detcon_jax/config.py``)."""
    config = config_dict.ConfigDict()
    config.method = "byol"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=50,
        width_multiplier=1,
        mlp_hidden_size=4096,
        projection_size=256,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=1000,
        blocks_per_group=None,
        channels_per_group=None,
    ))
    config.masks = config_dict.ConfigDict(dict(
        # One whole-image region per view.
        source="none",
        num_samples=1,
        max_mask_id=256,
        grid_size=4,
        fh_index=0,
    ))
    # Unused by BYOL's regression loss; kept so every config has the same schema.
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
        source="imagenet_fh",
        path="",
        split="train",
        tfds_name="",
        image_size=224,
        num_examples=1281167,
        synthetic_num_images=64,
        shuffle_buffer=10_000,
        cache=False,
        deterministic=False,
        fh_scale=1000.0,
        fh_min_size=1000,
    ))
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 4096
    config.num_epochs = 1000
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3))
    config.log_every_steps = 100
    return config
