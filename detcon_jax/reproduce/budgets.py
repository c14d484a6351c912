"""What the reproduction compares: the methods, the budgets, and each budget's pretraining config.

Every method is pretrained with the same config: the base config (``detcon_jax.configs``)
with `CAMVID` and the budget's sizes on top (`pretrain_config`); only ``method`` and
``masks.source`` differ between methods. A budget is named on the command line as
``NAME[,FIELD=VALUE...]`` (`parse_budget`, the config-argument parser), e.g.
``small,num_steps=100``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ml_collections import config_dict

from detcon_jax import configs

PROBES = ("linear", "knn", "segmentation")
PROBE_TITLES = {"linear": "CIFAR-10 linear top-1 (%)", "knn": "CIFAR-10 k-NN top-1 (%)",
                "segmentation": "CamVid seg. probe mIoU (%)"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison: a pretraining method and its mask source."""

    name: str
    label: str
    method: str | None  # None: the random-initialisation baseline (no training)
    masks: str
    paper: str  # the paper's corresponding claim (qualitative)
    # Further ``config key -> value`` overrides of this row (the loss ablation's switches).
    overrides: tuple[tuple[str, Any], ...] = ()


METHODS: tuple[Method, ...] = (
    Method("detcon_b_gt", "DetCon-B (GT masks)", "detcon_b", "gt",
           "paper: best masks of the mask ablation (human-annotated COCO masks); DetCon-B > "
           "BYOL on dense transfer"),
    Method("detcon_b_fh", "DetCon-B (FH masks)", "detcon_b", "fh",
           "paper: the main DetCon-B setting; > BYOL on COCO detection/instance seg., PASCAL "
           "VOC and Cityscapes segmentation"),
    Method("detcon_b_grid", "DetCon-B (grid masks)", "detcon_b", "grid",
           "paper: spatial-heuristic masks rank below FH and ground-truth masks"),
    Method("detcon_s_gt", "DetCon-S (GT masks)", "detcon_s", "gt",
           "paper: DetCon-S > SimCLR on dense transfer"),
    Method("byol", "BYOL", "byol", "none", "paper: the baseline of DetCon-B"),
    Method("simclr", "SimCLR", "simclr", "none", "paper: the baseline of DetCon-S"),
    Method("random", "Random init", None, "none",
           "not in the paper: the floor every pretrained method should beat"),
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Model, pretraining and probe sizes of one ``--budget``."""

    name: str
    # Pretraining (identical for every method).
    image_size: int
    batch_size: int
    num_steps: int
    warmup_epochs: int
    base_learning_rate: float
    base_ema: float
    depth: int
    blocks_per_group: tuple[int, int, int, int]
    channels_per_group: tuple[int, int, int, int]
    mlp_hidden_size: int
    projection_size: int
    checkpoint_every: int
    log_every: int
    # CIFAR-10 probes (None: every image of the split).
    cifar_train_per_class: int | None
    cifar_test_per_class: int | None
    cifar_image_size: int
    linear_epochs: int
    linear_learning_rates: tuple[float, ...]
    linear_augment_passes: int
    linear_batch_size: int
    knn_k: int
    # CamVid segmentation probe.
    seg_image_size: int
    seg_epochs: int
    seg_augment_passes: int
    seg_batch_size: int
    eval_batch_size: int
    # Not a size: the seed of every pretraining and of the random-init baseline, set per run
    # by ``--pretrain_seed``.
    pretrain_seed: int = 0


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny", image_size=32, batch_size=4, num_steps=2, warmup_epochs=0,
        base_learning_rate=16.0, base_ema=0.99, depth=18, blocks_per_group=(1, 1, 1, 1),
        channels_per_group=(16, 16, 16, 16), mlp_hidden_size=32, projection_size=16,
        checkpoint_every=2, log_every=1, cifar_train_per_class=3, cifar_test_per_class=2,
        cifar_image_size=32, linear_epochs=2, linear_learning_rates=(0.1, 1.0),
        linear_augment_passes=1, linear_batch_size=8, knn_k=5, seg_image_size=32,
        seg_epochs=2, seg_augment_passes=1, seg_batch_size=4, eval_batch_size=4),
    "small": Budget(
        name="small", image_size=96, batch_size=16, num_steps=300, warmup_epochs=1,
        base_learning_rate=16.0, base_ema=0.9, depth=18, blocks_per_group=(2, 2, 2, 2),
        channels_per_group=(32, 64, 128, 256), mlp_hidden_size=512, projection_size=128,
        checkpoint_every=50, log_every=10, cifar_train_per_class=200, cifar_test_per_class=100,
        cifar_image_size=96, linear_epochs=100, linear_learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0),
        linear_augment_passes=0, linear_batch_size=256, knn_k=20, seg_image_size=128,
        seg_epochs=50, seg_augment_passes=2, seg_batch_size=16, eval_batch_size=100),
    "full": Budget(
        name="full", image_size=224, batch_size=128, num_steps=5000, warmup_epochs=10,
        base_learning_rate=2.0, base_ema=0.99, depth=50, blocks_per_group=(3, 4, 6, 3),
        channels_per_group=(256, 512, 1024, 2048), mlp_hidden_size=4096, projection_size=256,
        checkpoint_every=500, log_every=50, cifar_train_per_class=None,
        cifar_test_per_class=None, cifar_image_size=128, linear_epochs=100,
        linear_learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0), linear_augment_passes=10,
        linear_batch_size=1024, knn_k=20, seg_image_size=224, seg_epochs=50,
        seg_augment_passes=4, seg_batch_size=16, eval_batch_size=128),
}


# The base config's changes for pretraining on a CamVid-layout folder, shared by every budget.
CAMVID: dict[str, Any] = {
    "masks.source": "gt",
    "model.num_classes": 0,
    "optim.base_ema": 0.99,
    "data.source": "folder",
    # None: counted from the folder.
    "data.num_examples": None,
    # The whole split.
    "data.shuffle_buffer": 512,
    "data.cache": True,
    # A fixed element order: the reproduction gives the same numbers when run again.
    "data.deterministic": True,
    "num_epochs": 100,
    "checkpoint.keep": 1,
}

# Budget field -> the config key it sets (the pretraining part of a budget).
PRETRAIN_KEYS: dict[str, str] = {
    "image_size": "data.image_size",
    "batch_size": "batch_size",
    "num_steps": "num_steps",
    "warmup_epochs": "optim.warmup_epochs",
    "base_learning_rate": "optim.base_learning_rate",
    "base_ema": "optim.base_ema",
    "depth": "model.depth",
    "blocks_per_group": "model.blocks_per_group",
    "channels_per_group": "model.channels_per_group",
    "mlp_hidden_size": "model.mlp_hidden_size",
    "projection_size": "model.projection_size",
    "checkpoint_every": "checkpoint.every_steps",
    "log_every": "log_every_steps",
}

# Set per run by --pretrain_seed, not part of a budget's name on the command line.
_NOT_IN_SPEC = ("name", "pretrain_seed")


def _spec_fields(budget: Budget) -> dict[str, Any]:
    """The fields ``NAME,FIELD=VALUE`` can set: the scalar ones."""
    return {f.name: getattr(budget, f.name) for f in dataclasses.fields(budget)
            if f.name not in _NOT_IN_SPEC
            and isinstance(getattr(budget, f.name), (bool, int, float, str))}


def parse_budget(spec: str) -> Budget:
    """The budget named by ``NAME[,FIELD=VALUE...]`` (e.g. ``small,num_steps=100``).

    Raises:
      configs.ConfigArgError: an unknown budget or field, or a value of the wrong type (one
        line).
    """
    name, _, rest = spec.partition(",")
    if name not in BUDGETS:
        raise configs.ConfigArgError(f"budget must be one of {tuple(sorted(BUDGETS))}, got "
                                     f"{name!r}")
    budget = BUDGETS[name]
    values = configs.parse_arg(rest, **_spec_fields(budget))
    return dataclasses.replace(budget, **values.to_dict())


def budget_spec(budget: Budget) -> str:
    """The ``NAME[,FIELD=VALUE...]`` of ``budget``'s pretraining settings (`parse_budget`'s
    inverse on them)."""
    named = BUDGETS[budget.name]
    changed = [f for f in PRETRAIN_KEYS if getattr(budget, f) != getattr(named, f)]
    fixed = [f for f in changed if f not in _spec_fields(named)]
    if fixed:
        raise ValueError(f"budget {budget.name!r}: {fixed} cannot differ from the named budget's")
    return ",".join([budget.name] + [f"{f}={getattr(budget, f)}" for f in changed])


def pretrain_config(budget: Budget) -> config_dict.ConfigDict:
    """The config every method of ``budget`` starts from (DetCon-B with ground-truth masks)."""
    overrides = {**CAMVID, **{key: getattr(budget, field) for field, key in PRETRAIN_KEYS.items()},
                 "seed": budget.pretrain_seed}
    return configs.apply_overrides(configs.get_config(), overrides)
