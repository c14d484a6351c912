"""Masks you can see: mask statistics, warnings and TensorBoard pictures of a training run.

- The smoke config with grid masks at 32 px (a 1x1 feature grid, where the views rarely
  share their one id) warns at start-up and once when a step's loss is exactly 0, logs the
  positive fraction and the ids per view every step (metrics.jsonl), and writes pictures of
  what the loss sees to TensorBoard every ``image_every_steps`` (``cli_helpers.RUN``: the
  train tests' compiled step; one subprocess, marked slow for its ~1 min).
- The warnings' wording and the key's validation, in-process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import RUN, STEPS, run_cli, tensorboard_images
from conftest import smoke_config

from detcon_jax import config as config_lib
from detcon_jax import diagnostics, mask_pictures

TAG = "masks/what_the_loss_sees"  # trainer._ImageSummaries.TAG
IMAGE_EVERY = 32


@pytest.mark.slow
def test_grid_masks_at_32px_warn_log_positives_and_write_pictures(tmp_path):
    workdir = tmp_path / "grid"
    proc = run_cli(workdir, *RUN, "--config.masks.source=grid",
                   f"--config.image_every_steps={IMAGE_EVERY}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = proc.stderr.splitlines()
    startup = [x for x in err if "gives a 1x1 feature grid" in x]
    zero = [x for x in err if "exactly 0: likely cause" in x]
    assert len(startup) == 1 and "data.image_size=32" in startup[0], proc.stderr[-4000:]
    assert len(zero) == 1 and "positive_fraction 0" in zero[0], proc.stderr[-4000:]

    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == STEPS
    for line in lines:
        assert line["mask_ids_view1"] == line["mask_ids_view2"] == 1.0  # one cell, one id
        # The smoke data has no labels: the loss is DetCon's, 0 exactly when no sampled
        # region has a positive.
        assert (line["loss"] == 0) == (line["positive_fraction"] == 0), line
        assert 0 <= line["positive_fraction"] <= 1
    first_zero = next(x["step"] for x in lines if x["loss"] == 0)
    assert f"step {first_zero}:" in zero[0]
    last = [x for x in err if f"step {STEPS}/{STEPS}" in x]  # the console's last line
    assert f"positives {lines[-1]['positive_fraction']:.2f}  ids/view 1.0/1.0" in last[0]

    pictures = tensorboard_images(workdir / "tensorboard", TAG)
    assert sorted(pictures) == list(range(IMAGE_EVERY, STEPS + 1, IMAGE_EVERY))
    for picture in pictures.values():
        tile = 128
        columns = len(mask_pictures.LOSS_PANEL_COLUMNS)
        assert picture.shape[1:] == (columns * tile, 3)
        body = picture[picture.shape[0] - 4 * tile:]  # four images under the header
        assert picture.shape[0] > 4 * tile and body.std() > 10
    assert not np.array_equal(*pictures.values())  # each step shows its own views


def test_feature_grid_warning_only_for_multi_mask_methods_on_a_1x1_grid():
    config = smoke_config()  # 32 px, FH masks
    assert "data.image_size=32 gives a 1x1 feature grid" in diagnostics.feature_grid_warning(
        config)
    config.data.image_size = 96
    assert diagnostics.feature_grid_warning(config) is None
    config.data.image_size, config.masks.source = 32, "none"
    assert diagnostics.feature_grid_warning(config) is None


def test_zero_signal_warning_names_the_likely_cause():
    config = smoke_config()
    ok = {"loss": 0.5, "repr_loss": 0.5, "grad_norm": 1.0, "positive_fraction": 0.2}
    assert diagnostics.zero_signal_warning(config, 3, ok) is None
    no_positives = dict(ok, loss=0.0, repr_loss=0.0, grad_norm=0.0, positive_fraction=0.0,
                        mask_ids_view1=1.0, mask_ids_view2=1.0)
    line = diagnostics.zero_signal_warning(config, 3, no_positives)
    assert line.startswith("step 3: loss, repr_loss, grad_norm are exactly 0: likely cause: ")
    assert "positive_fraction 0" in line and "1x1 feature grid" in line and "\n" not in line
    line = diagnostics.zero_signal_warning(config, 5, dict(ok, grad_norm=0.0))
    assert line.startswith("step 5: grad_norm is exactly 0 with loss 0.5")
    warned = []
    watch = diagnostics.ZeroSignalWatch(config, warned.append)
    watch.check([(1, ok), (2, no_positives), (3, no_positives)])
    watch.check([(4, no_positives)])
    assert len(warned) == 1 and warned[0].startswith("step 2:")


def test_image_every_steps_is_validated():
    config = smoke_config()
    config.image_every_steps = 0  # no pictures
    config_lib.validate(config)
    config.image_every_steps = -1
    with pytest.raises(config_lib.ConfigError, match="config key 'image_every_steps'"):
        config_lib.validate(config)
