"""Reading the official training-step goldens (``golden/step``) as our config and batches.

Every size and value comes from the golden's files (``meta.json`` and the arrays), so the
tests that use this run unchanged on any golden set of the same layout (other seeds, batch
and image sizes, step counts, schedules).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

import numpy as np

from detcon_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

# With every apply probability 0 the official augmentation is the identity (plus a clip to
# [0, 1]); this is how the golden was made, and ours is switched off the same way.
NO_PHOTOMETRIC_AUGMENTATION = {
    "color_transform": {"apply_prob": 0.0},
    "gaussian_blur": {"apply_prob": 0.0},
    "solarize": {"apply_prob": 0.0},
}


def load_step_golden(path: pathlib.Path) -> dict[str, Any]:
    """``meta``, ``init`` (flat dict) and ``steps`` (list of flat dicts, in order)."""
    meta = json.loads((path / "meta.json").read_text())
    files = sorted(path.glob("step_*.npz"))
    if not files:
        raise FileNotFoundError(f"no step_*.npz in {path}")

    def read(file):
        with np.load(file) as npz:
            return {k: npz[k] for k in npz.files}

    return {"meta": meta, "init": read(path / "init.npz"), "steps": [read(f) for f in files]}


def step_config(meta: dict[str, Any], first_step: dict[str, np.ndarray]) -> tuple[Any, int, int]:
    """Our config for the golden's official config, with ``(total_steps, warmup_steps)``.

    The schema's other keys (data source, mesh, checkpoint cadence) come from the smoke
    experiment; they play no part in the step. ``num_steps`` and a one-step epoch
    (``data.num_examples = batch_size``) make the derived schedule lengths the official ones.
    """
    spec = importlib.util.spec_from_file_location("smoke", REPO / "experiments" / "smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()

    official = meta["config"]
    model, optimizer, training = official["model"], official["optimizer"], official["training"]
    encoder = meta["encoder"]
    assert official["training_mode"] == "self-supervised", official["training_mode"]
    assert optimizer["name"] == "lars" and optimizer["scale_by_batch"], optimizer
    # Our torso gives every group's first block a projection shortcut, as the official one.
    assert all(encoder["use_projection"]), encoder
    assert not model["encoder_use_v2"], "ResNet v2 is not ported"

    config.method = "detcon_b"
    config.seed = int(official["random_seed"])
    config.model.depth = 50 if encoder["bottleneck"] else 18  # the preset's block type
    config.model.blocks_per_group = tuple(encoder["blocks_per_group"])
    config.model.channels_per_group = tuple(encoder["channels_per_group"])
    config.model.width_multiplier = int(model["encoder_width_multiplier"])
    config.model.mlp_hidden_size = int(model["mlp_hidden_size"])
    config.model.projection_size = int(model["projection_size"])
    config.model.bn_decay = float(model["norm_config"]["decay_rate"])
    config.model.bn_epsilon = float(model["norm_config"]["eps"])
    config.model.num_classes = int(meta["num_classes"])
    config.model.dtype = "float32"

    batch, rois = first_step["inputs/mask_ids1"].shape
    segmentation = first_step["inputs/fh_segmentations1"]
    assert segmentation.dtype == np.uint8  # ids wrap at 256, as the official one-hot
    config.masks.source = "fh"
    config.masks.num_samples = int(rois)
    config.masks.max_mask_id = 256
    config.masks.fh_index = int(model["fh_mask_to_use"])

    config.loss.temperature = float(training["nce_loss_temperature"])
    lars = optimizer["lars_kwargs"]
    config.optim.base_learning_rate = float(optimizer["base_learning_rate"])
    config.optim.weight_decay = float(lars["weight_decay"])
    config.optim.momentum = float(lars["momentum"])
    config.optim.trust_coefficient = float(lars["eta"])
    config.optim.base_ema = float(training["base_target_ema"])

    total_steps, warmup_steps = int(training["max_steps"]), int(optimizer["warmup_steps"])
    config.batch_size = int(training["batch_size"])
    assert config.batch_size == batch, (config.batch_size, batch)
    config.data.image_size = int(first_step["inputs/view1"].shape[1])
    config.data.num_examples = config.batch_size
    config.num_steps = total_steps
    config.optim.warmup_epochs = warmup_steps
    config.augment.view1 = dict(NO_PHOTOMETRIC_AUGMENTATION)
    config.augment.view2 = dict(NO_PHOTOMETRIC_AUGMENTATION)
    config_lib.validate(config)
    return config, total_steps, warmup_steps


def step_batch(step: dict[str, np.ndarray], fh_index: int) -> dict[str, np.ndarray]:
    """The golden step's inputs as our batch, mask ids included (the step then uses them)."""
    return {
        "view1": step["inputs/view1"],
        "view2": step["inputs/view2"],
        "mask1": step["inputs/fh_segmentations1"][..., fh_index:fh_index + 1],
        "mask2": step["inputs/fh_segmentations2"][..., fh_index:fh_index + 1],
        "label": step["inputs/labels"].astype(np.int32),
        "mask_ids1": step["inputs/mask_ids1"].astype(np.int32),
        "mask_ids2": step["inputs/mask_ids2"].astype(np.int32),
    }


def state_before(golden: dict[str, Any], index: int) -> dict[str, np.ndarray]:
    """The official state that step ``index`` starts from (``init`` or the previous ``after``)."""
    if index == 0:
        return golden["init"]
    return {k[len("after/"):]: v for k, v in golden["steps"][index - 1].items()
            if k.startswith("after/")}
