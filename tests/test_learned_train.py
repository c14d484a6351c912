"""``experiments/detcon_b_camvid.py:learned`` through the train CLI, at smoke size: trains
across the bootstrap switch-over, resumes exactly (the discovery EMA is checkpointed), and
8 fake devices equal 1 device. DetCon-S with its own discovery EMA (the path with extra
state); DetCon-B with the target network runs in ``test_learned_masks.py``.

Slow (three CLI runs of a few steps each, ~1-2 min apiece on the CI machine).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
from cli_helpers import REPO, assert_same_state, checkpoint_steps, load_state, subprocess_env
from data_helpers import write_folder
from tolerances import f32_tolerance

pytestmark = pytest.mark.slow

SPEC = f"{REPO / 'experiments' / 'detcon_b_camvid.py'}:learned"
STEPS = 4
# Views at 32 px, the covering window at 96 px (block group 3: a 6 x 6 grid to cluster); the
# switch-over from the grid masks after step 2 happens inside the run.
FLAGS = (
    f"--config.num_steps={STEPS}", "--config.checkpoint.every_steps=2",
    "--config.checkpoint.keep=10", "--config.batch_size=8", "--config.data.image_size=32",
    "--config.masks.learned.image_size=96", "--config.masks.learned.bootstrap_steps=2",
    "--config.model.blocks_per_group=(1,1,1,1)", "--config.model.channels_per_group=(16,16,16,16)",
    "--config.model.mlp_hidden_size=64", "--config.model.projection_size=32",
    "--config.optim.warmup_epochs=0", "--config.log_every_steps=1",
    "--config.method=detcon_s", "--config.masks.learned.network=ema",
)
# 8 images x 6 x 6 x 2 views at the largest BatchNorm of the 96 px discovery input's sums.
SHARDED_TOL = f32_tolerance(8 * 48 * 48, depth=32)


def _train(workdir: pathlib.Path, data: pathlib.Path, devices: int = 1) -> None:
    cmd = [sys.executable, "-m", "detcon_jax.train", f"--config={SPEC}",
           f"--config.data.path={data}", f"--workdir={workdir}", *FLAGS]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(devices), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    data = root / "data"
    data.mkdir()
    write_folder(data, n=8, corrupt=False)
    _train(root / "full", data)
    return root, data


def test_learned_masks_train_checkpoint_and_resume_exactly(runs):
    root, data = runs
    full = root / "full" / "checkpoints"
    assert checkpoint_steps(full) == [2, 4]
    state = load_state(full / str(STEPS))
    assert any("discovery_params" in k for k in state)
    resumed = root / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "2", resumed / "checkpoints" / "2")
    _train(resumed, data)
    assert_same_state(load_state(resumed / "checkpoints" / str(STEPS)), state)


def test_learned_masks_eight_devices_match_one(runs):
    root, data = runs
    _train(root / "eight", data, devices=8)
    assert_same_state(load_state(root / "eight" / "checkpoints" / str(STEPS)),
                      load_state(root / "full" / "checkpoints" / str(STEPS)), tol=SHARDED_TOL)
