"""SimCLR's published ImageNet setting, shared by the DetCon-S and SimCLR experiments.

The paper builds DetCon-S on SimCLR and re-uses its architecture and augmentations; no
DetCon-S config was released, so both experiments take SimCLR's values (the SimCLR
repository's ImageNet command): LARS with base learning rate 0.3 x batch/256, weight decay
1e-6, projection MLP 2048 -> 128, and SimCLR's symmetric augmentations.
"""

from __future__ import annotations

from typing import Any

from ml_collections import config_dict


def view() -> dict[str, Any]:
    """SimCLR's augmentation for one view (colour-distortion strength 1, blur probability 0.5,
    no solarisation), as overrides of this code's per-view settings."""
    return dict(
        color_transform=dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                             color_jitter_prob=0.8, to_grayscale_prob=0.2),
        gaussian_blur=dict(apply_prob=0.5),
        solarize=dict(apply_prob=0.0),
    )


def apply(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """``config`` with SimCLR's heads, optimiser and augmentations (in place); returns it."""
    config.model.mlp_hidden_size = 2048
    config.model.projection_size = 128
    config.optim.base_learning_rate = 0.3
    config.optim.weight_decay = 1e-6
    config.augment.view1 = view()
    config.augment.view2 = view()
    return config.lock()
