"""SimCLR baseline on ImageNet, trained by the same code as DetCon-S (ResNet-50, 224 px).

The paper (Hénaff et al., ICCV 2021, arXiv 2103.10957) builds DetCon-S on SimCLR (Chen et
al., 2020), re-using its architecture and augmentations, and compares the two. This config is
SimCLR's published ImageNet setting run with this code's shared encoder + projector (no
predictor, no target network) and one whole-image "mask" per view (``masks.source =
'none'``), so the loss is SimCLR's NT-Xent:

- batch 4096, LARS with base learning rate 0.3 x batch/256 (4.8), weight decay 1e-6,
  temperature 0.1 (the SimCLR repository's ImageNet command);
- projection MLP 2048 -> 128 (SimCLR's ResNet-50 head; this code's MLP has no BatchNorm on
  the output layer, unlike SimCLR's);
- SimCLR's symmetric augmentations (colour-distortion strength 1: brightness/contrast/
  saturation 0.8, hue 0.2 with probability 0.8, grayscale 0.2, Gaussian blur with probability
  0.5 on both views, no solarisation);
- 1000 epochs by default with warm-up ``num_epochs // 100`` epochs derived in code (10 at 1000
  epochs, SimCLR's value; SimCLR also uses 10 for shorter runs: set
  ``--config.optim.warmup_epochs=10`` for that), cosine decay to 0;
- an online linear classifier on stop-gradient features for monitoring.

``optim.base_ema`` is unused (no target network).

Run:

    python -m detcon_jax.train --config=experiments/simclr_imagenet.py \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/simclr_1000ep

    # Shorter schedules: append --config.num_epochs=300.
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
    """SimCLR / ImageNet config (schema: ``detcon_jax/config.py``)."""
    config = config_dict.ConfigDict()
    config.method = "simclr"
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
        source="none",
        num_samples=1,
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
