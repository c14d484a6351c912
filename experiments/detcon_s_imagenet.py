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

from detcon_jax import configs


def get_config() -> config_dict.ConfigDict:
    """DetCon-S / ImageNet config: the base with SimCLR's heads, optimiser and augmentations."""
    config = configs.simclr.apply(configs.get_config())
    config.method = "detcon_s"
    return config
