"""DetCon-S pre-training on ImageNet: the SimCLR-based variant of DetCon (ResNet-50, 224 px).

Reproduces the pre-training stage of DetCon-S from Hénaff et al., "Efficient Visual
Pretraining with Contrastive Detection" (ICCV 2021, arXiv 2103.10957): the contrastive
detection objective with one shared encoder + projector for both views (no predictor, no
target network), on ImageNet with Felzenszwalb-Huttenlocher (FH) masks, 16 mask ids per view.
The paper builds DetCon-S on SimCLR, re-using SimCLR's architecture and augmentations.
DeepMind released code only for DetCon-B, so the values here are SimCLR's published ImageNet
setting (optimiser included: our choice, not a released config), identical to
``simclr_imagenet.py`` except for the objective and the masks:

- batch 4096, LARS with base learning rate 0.3 x batch/256 (4.8), weight decay 1e-6,
  temperature 0.1 (the SimCLR repository's ImageNet command);
- projection MLP 2048 -> 128 (SimCLR's ResNet-50 head; no output BatchNorm here);
- SimCLR's symmetric augmentations (colour-distortion strength 1, blur probability 0.5 on
  both views, no solarisation);
- 1000 epochs by default, warm-up ``num_epochs // 100`` epochs derived in code, cosine
  decay to 0; an online linear classifier on stop-gradient features for monitoring.

``optim.base_ema`` is unused (no target network).

Run (data: official-layout TFRecords with FH masks, see docs/experiments.md):

    python -m detcon_jax.train --config=experiments/detcon_s_imagenet.py \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/detcon_s_1000ep

    # Shorter schedules: append --config.num_epochs=300.
    # DetCon-B's heads instead of SimCLR's: --config.model.mlp_hidden_size=4096
    #     --config.model.projection_size=256
"""

from ml_collections import config_dict


def _simclr_view() -> dict:
    """SimCLR's augmentation for one view, as overrides of this code's per-view settings."""
    return dict(
        color_transform=dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                             color_jitter_prob=0.8, to_grayscale_prob=0.2),
        gaussian_blur=dict(apply_prob=0.5),
        solarize=dict(apply_prob=0.0),
    )


def get_config() -> config_dict.ConfigDict:
    """DetCon-S / ImageNet config (schema: ``detcon_jax/config.py``)."""
    config = config_dict.ConfigDict()
    config.method = "detcon_s"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=50,
        width_multiplier=1,
        mlp_hidden_size=2048,
        projection_size=128,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=1000,
        blocks_per_group=None,
        channels_per_group=None,
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
        base_learning_rate=0.3,
        weight_decay=1e-6,
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
    config.augment = config_dict.ConfigDict(dict(view1=_simclr_view(), view2=_simclr_view()))

    config.batch_size = 4096
    config.num_epochs = 1000
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3))
    config.log_every_steps = 100
    return config
