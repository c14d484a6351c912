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

from detcon_jax import configs


def get_config() -> config_dict.ConfigDict:
    """SimCLR / ImageNet config: the base with SimCLR's objective, heads, optimiser and
    augmentations."""
    config = configs.simclr.apply(configs.get_config())
    config.method = "simclr"
    # One whole-image region per view.
    config.masks.source = "none"
    config.masks.num_samples = 1
    return config
