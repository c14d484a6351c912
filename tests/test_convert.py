"""Tests of the conversion CLI (python -m detcon_jax.convert) on a random Haiku ResNet-18."""

import json
import os
import pickle
import pickletools
import subprocess
import sys

import eval_helpers
import jax
import numpy as np
import pytest
from torch_helpers import require

from detcon_jax import checkpoint, convert, export, interop
from detcon_jax.config import ConfigError, model_signature
from detcon_jax.evaluate import features


@pytest.fixture(scope="module")
def haiku_npy(tmp_path_factory):
    """A released-layout Haiku ResNet-18 (.npy) with random weights and statistics."""
    return str(eval_helpers.write_haiku_resnet18(tmp_path_factory.mktemp("haiku") / "resnet18.npy"))


@pytest.fixture(scope="module")
def reference(haiku_npy):
    _, variables = interop.load_haiku_resnet(haiku_npy)
    return jax.tree.map(np.asarray, variables)


def _assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def orbax_dir(haiku_npy, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("orbax") / "imported")
    assert convert.main(["haiku-to-orbax", f"--input={haiku_npy}", f"--output={out}"]) == 0
    return out


def test_haiku_to_orbax_is_read_by_evaluation(orbax_dir, reference):
    backbone, info = features.load_backbone(orbax_dir)
    assert info["kind"] == "orbax" and info["depth"] == 18
    _assert_trees_equal(jax.tree.map(np.asarray, dict(backbone.variables)), reference)
    summary = json.loads(open(os.path.join(orbax_dir, "encoder.json")).read())
    assert summary["depth"] == 18 and summary["width_multiplier"] == 1
    # An imported encoder is not a training state: train.py must refuse to resume from it.
    with pytest.raises(ConfigError, match="belongs to another model"):
        checkpoint.check_workdir_compatible(os.path.join(orbax_dir, "checkpoints"),
                                            {"method": "detcon_b", "model": {}})


@pytest.mark.parametrize("source", ["npy", "orbax"])
def test_to_torchvision_npz(source, haiku_npy, orbax_dir, reference, tmp_path):
    out = str(tmp_path / "sub" / "r18.npz")
    src = haiku_npy if source == "npy" else orbax_dir
    assert convert.main(["to-torchvision", f"--input={src}", f"--output={out}"]) == 0
    with np.load(out) as npz:
        got = {k: npz[k] for k in npz.files}
    want = export.flax_to_torchvision(reference)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value)


def test_to_torchvision_pth_with_torch(haiku_npy, reference, tmp_path, capsys):
    """With torch: a .pth that torch.load reads back (weights_only, as torch's default) into
    the exported tensors, dtypes included; the official torso's layer1 projection is warned
    about with the fix."""
    torch = require("torch")
    out = tmp_path / "r18.pth"
    assert convert.main(["to-torchvision", f"--input={haiku_npy}", f"--output={out}"]) == 0
    warning = [x for x in capsys.readouterr().err.splitlines() if "warning:" in x]
    assert len(warning) == 1 and "layer1.0.downsample" in warning[0]
    assert "add_layer1_projection" in warning[0] and "resnet18" in warning[0]
    loaded = torch.load(out, weights_only=True)
    want = export.flax_to_torchvision(reference)
    assert set(loaded) == set(want)
    for key, value in want.items():
        assert isinstance(loaded[key], torch.Tensor)
        got = loaded[key].numpy()
        assert got.dtype == value.dtype and got.shape == value.shape, key
        np.testing.assert_array_equal(got, value)


def test_to_torchvision_pth_without_torch_is_refused(haiku_npy, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert "torch is not importable" in _error(
        capsys, ["to-torchvision", f"--input={haiku_npy}", f"--output={tmp_path}/x.pth"])
    assert not (tmp_path / "x.pth").exists()


def test_to_detectron2_pkl(haiku_npy, reference, tmp_path, capsys):
    out = str(tmp_path / "r18.pkl")
    assert convert.main(["to-detectron2", f"--input={haiku_npy}", f"--output={out}"]) == 0
    warning = [x for x in capsys.readouterr().err.splitlines() if "warning:" in x]
    assert len(warning) == 1 and "res2.0.shortcut" in warning[0], warning
    with open(out, "rb") as f:
        data = f.read()
    # Protocol 4: numpy 1.x cannot read numpy 2's protocol-5 array pickles.
    first, protocol, _ = next(pickletools.genops(data))
    assert first.name == "PROTO" and protocol == 4
    payload = pickle.loads(data, encoding="latin1")
    assert payload["matching_heuristics"] is True and "detcon_jax" in payload["__author__"]
    want = export.to_detectron2(reference)["model"]
    assert set(payload["model"]) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(payload["model"][key], value)


def _error(capsys, argv):
    assert convert.main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_errors_are_one_line(haiku_npy, orbax_dir, tmp_path, capsys):
    missing = str(tmp_path / "missing.npy")
    assert "missing.npy: no such file" in _error(
        capsys, ["to-torchvision", f"--input={missing}", f"--output={tmp_path}/x.npz"])
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    assert "must be a Haiku .npy" in _error(
        capsys, ["to-detectron2", f"--input={text}", f"--output={tmp_path}/x.pkl"])
    assert "only from a .pkl" in _error(
        capsys, ["to-detectron2", f"--input={haiku_npy}", f"--output={tmp_path}/x.pth"])
    assert "not empty" in _error(
        capsys, ["haiku-to-orbax", f"--input={haiku_npy}", f"--output={orbax_dir}"])
    broken = np.load(haiku_npy, allow_pickle=True).item()
    del broken["res_net18/~/block_group_2/~/block_1/~/conv_0"]
    broken_path = tmp_path / "broken.npy"
    np.save(broken_path, broken, allow_pickle=True)
    assert "missing checkpoint key res_net18/~/block_group_2/~/block_1/~/conv_0/w" in _error(
        capsys, ["to-torchvision", f"--input={broken_path}", f"--output={tmp_path}/x.npz"])


def test_module_entry_point(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "detcon_jax.convert", "to-detectron2",
         f"--input={tmp_path}/nope", f"--output={tmp_path}/x.pkl"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: --input={tmp_path}/nope: no such file "
                                               f"or directory"]


# An experiment file for the network of golden/step (read off its meta.json), training on
# our own synthetic data from the imported state on.
_GOLDEN_EXPERIMENT = """
import json, pathlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
import golden_helpers


def get_config():
    golden = pathlib.Path({golden!r})
    meta = json.loads((golden / "meta.json").read_text())
    with np.load(golden / "step_000.npz") as first:
        config, _, _ = golden_helpers.step_config(meta, {{k: first[k] for k in first.files}})
    config.num_steps = {steps}
    config.optim.warmup_epochs = 0
    return config
"""


@pytest.mark.slow  # a training run or CLI subprocess: kept out of the fast loop
def test_official_state_to_orbax_resumes_in_train(golden_dir, tmp_path, capsys):
    """init.npz (official names) -> workdir; train.py resumes from it and trains a step."""
    from cli_helpers import REPO, checkpoint_steps, load_state, subprocess_env
    from golden_helpers import load_step_golden

    golden = golden_dir / "step"
    experiment = tmp_path / "golden_experiment.py"
    experiment.write_text(_GOLDEN_EXPERIMENT.format(
        tests=str(REPO / "tests"), golden=str(golden), steps=1))
    workdir = tmp_path / "run"
    argv = ["official-state-to-orbax", f'--input={golden / "init.npz"}',
            f"--config={experiment}", f"--workdir={workdir}"]
    assert convert.main(argv) == 0
    # The checkpoint holds the mapped official state exactly.
    config = convert._load_config(str(experiment))
    want = interop.train_state_from_haiku(load_step_golden(golden)["init"], config)
    reader = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=1,
                                     signature=model_signature(config))
    try:
        got, meta = reader.restore(checkpoint.abstract_like(want), 0)
    finally:
        reader.close()
    assert meta["data_position"] == 0
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    kernel = np.asarray(want.online_params["encoder"]["initial_conv"]["kernel"])
    assert "already holds checkpoints" in _error(capsys, argv)

    run = subprocess.run(
        [sys.executable, "-m", "detcon_jax.train", f"--config={experiment}",
         f"--workdir={workdir}"], cwd=REPO, env=subprocess_env(), capture_output=True,
        text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Resumed from" in run.stderr and "at step 0" in run.stderr, run.stderr[-3000:]
    assert checkpoint_steps(workdir / "checkpoints") == [0, 1]
    after = load_state(workdir / "checkpoints" / "1")
    assert int(after["['step']"]) == 1
    moved = after["['online_params']['encoder']['initial_conv']['kernel']"]
    assert moved.shape == kernel.shape and not np.array_equal(moved, kernel)


def test_official_state_errors_are_one_line(golden_dir, tmp_path, capsys):
    from cli_helpers import SMOKE

    init = golden_dir / "step" / "init.npz"
    assert "no such file" in _error(capsys, [
        "official-state-to-orbax", f"--input={tmp_path}/nope.npz", f"--config={SMOKE}",
        f"--workdir={tmp_path}/w"])
    # The smoke network is not the golden's: the first key that does not fit is named.
    line = _error(capsys, ["official-state-to-orbax", f"--input={init}", f"--config={SMOKE}",
                           f"--workdir={tmp_path}/w"])
    assert "init.npz: " in line and "res_net_torso" in line, line
    assert not (tmp_path / "w").exists()
