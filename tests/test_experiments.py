"""Every experiment config loads as the train CLI loads it, validates, and builds its state.

Configs are read through ``ml_collections.config_flags`` with ``--config=FILE[:ARG]`` and
``--config.KEY=VALUE`` overrides, exactly as ``python -m detcon_jax.train`` reads them. The
train state is built abstractly (``jax.eval_shape``: no parameters are materialised, nothing
is compiled), so a broken config fails here without an accelerator. The ImageNet schedules are
checked against the official golden values (100 epochs) and an independent NumPy formula.
"""

from __future__ import annotations

import ast
import math
import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from tolerances import f32_tolerance

from detcon_jax import augment, optim, step, trainer
from detcon_jax import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.name for p in (REPO_ROOT / "experiments").glob("*.py"))

# Files the project promises (issue 6); the glob above covers any others as well.
REQUIRED = ("detcon_b_imagenet.py", "detcon_s_imagenet.py", "byol_imagenet.py",
            "simclr_imagenet.py", "detcon_b_coco.py", "detcon_b_camvid.py", "smoke.py")
# Mask-ablation arms selected with --config=FILE:ARG -> the masks.source each must give.
ABLATIONS = {
    "detcon_b_imagenet.py": {"fh": "fh", "grid": "grid"},
    "detcon_b_coco.py": {"fh": "fh", "fh_online": "fh", "gt": "gt", "grid": "grid"},
    "detcon_b_camvid.py": {"gt": "gt", "fh": "fh", "grid": "grid", "learned": "learned"},
}
IMAGENET_TRAIN_IMAGES = 1281167
RESNET50_ENCODER_PARAMS = 23_508_032  # torso of torchvision/Haiku ResNet-50 without the fc


def load_config(spec: str, *overrides: str):
    """The config ``python -m detcon_jax.train --config=spec *overrides`` would train."""
    argv = ["detcon_jax.train", f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config",
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def spec_of(name: str, arg: str | None = None) -> str:
    path = str(REPO_ROOT / "experiments" / name)
    return path if arg is None else f"{path}:{arg}"


def path_overrides(spec: str, tmp_path: pathlib.Path) -> list[str]:
    """A stand-in data directory for sources that refuse to run without one."""
    config = load_config(spec)
    if config.data.source in config_lib.SOURCES_NEEDING_PATH and not config.data.path:
        return [f"--config.data.path={tmp_path}"]
    return []


def images_per_epoch(config) -> int:
    # Shapes do not depend on the data-set size; sources counted from files get a stand-in.
    if config.data.num_examples is not None:
        return config.data.num_examples
    if config.data.source == "synthetic":
        return config.data.synthetic_num_images
    return 10_000


def abstract_state(config):
    warmup, total = trainer.derive_steps(config, images_per_epoch(config))
    schedules = step.make_schedules(config, total_steps=total, warmup_steps=warmup)
    optimizer = step.make_optimizer(config, schedules)
    return jax.eval_shape(lambda: step.create_train_state(
        config, jax.random.PRNGKey(config.seed), optimizer=optimizer))


def num_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_required_experiments_exist():
    missing = sorted(set(REQUIRED) - set(EXPERIMENTS))
    assert not missing, f"experiments/ lacks {missing}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_shape(name):
    """Imports only ml_collections and the base config package (``detcon_jax.configs``, no
    JAX or TensorFlow), defines get_config, documents its exact run command."""
    source = (REPO_ROOT / "experiments" / name).read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imported.update(f"{module}.{a.name}" if module == "detcon_jax" else module
                            for a in node.names)
    allowed = {"ml_collections", "ml_collections.config_dict", "__future__", "detcon_jax.configs"}
    assert imported <= allowed, f"{name} imports {imported - allowed}"
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "get_config" in functions
    doc = ast.get_docstring(tree) or ""
    assert f"python -m detcon_jax.train --config=experiments/{name}" in doc, (
        f"{name}: the docstring must give the run command")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_validates_and_builds_state(name, tmp_path):
    config = load_config(spec_of(name), *path_overrides(spec_of(name), tmp_path))
    config_lib.validate(config)
    config_lib.validate_runtime(config, device_count=8, process_count=2)
    for view, default in (("view1", augment.VIEW1_CONFIG), ("view2", augment.VIEW2_CONFIG)):
        augment.resolve_config(config.augment[view], default, view)  # unknown keys raise

    state = abstract_state(config)

    m = config.model
    with_target = config_lib.uses_target_network(config.method)
    assert (state.target_params is not None) == with_target
    online = state.online_params
    assert ("predictor" in online) == with_target
    assert online["projector"]["linear_1"]["kernel"].shape == (m.mlp_hidden_size,
                                                               m.projection_size)
    assert ("classifier" in online) == (m.num_classes > 0)
    if with_target:
        assert jax.tree.map(lambda x: x.shape, state.target_params) == jax.tree.map(
            lambda x: x.shape, online)
    # The optimiser state mirrors the parameters (LARS momentum buffer).
    assert num_params(state.opt_state) >= num_params(online)
    if m.depth == 50 and m.width_multiplier == 1 and m.channels_per_group is None:
        assert num_params(online["encoder"]) == RESNET50_ENCODER_PARAMS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_data_path_required_exactly_where_the_source_reads_files(name):
    """Configs on real data name the missing directory; the others run without any."""
    config = load_config(spec_of(name))
    if config.data.source in config_lib.SOURCES_NEEDING_PATH:
        assert config.data.path == "", f"{name}: a default data path ties it to one machine"
        with pytest.raises(config_lib.ConfigError, match="data.path"):
            config_lib.validate(config)
    else:
        config_lib.validate(config)


@pytest.mark.parametrize("name,arg", [(n, a) for n, arms in ABLATIONS.items() for a in arms])
def test_mask_ablation_arms(name, arg, tmp_path):
    """Each arm validates, has the requested mask source and the default arm's model shapes."""
    config = load_config(spec_of(name, arg), *path_overrides(spec_of(name, arg), tmp_path))
    config_lib.validate(config)
    assert config.masks.source == ABLATIONS[name][arg]
    default = load_config(spec_of(name))
    assert config_lib.model_signature(config) == config_lib.model_signature(default)
    # Arms differ in data and masks only: same schedule, same images per epoch.
    for key in ("batch_size", "num_epochs", "optim", "loss", "model", "augment"):
        assert config[key] == default[key], key
    assert config.data.num_examples == default.data.num_examples


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_unknown_mask_arm_is_a_clear_error(name):
    with pytest.raises(flags.IllegalFlagValueError, match="mask source must be one of"):
        load_config(spec_of(name, "bogus"))


def test_detcon_b_imagenet_has_the_official_hyper_parameters():
    """Values of DeepMind's detcon_b_config.py (and the issue's 1000-epoch default)."""
    c = load_config(spec_of("detcon_b_imagenet.py"))
    assert (c.method, c.model.depth, c.model.width_multiplier) == ("detcon_b", 50, 1)
    assert (c.model.mlp_hidden_size, c.model.projection_size) == (4096, 256)
    assert (c.model.bn_decay, c.model.bn_epsilon, c.model.num_classes) == (0.9, 1e-5, 1000)
    assert (c.masks.source, c.masks.num_samples, c.masks.fh_index) == ("fh", 16, 0)
    assert c.loss.temperature == 0.1
    o = c.optim
    assert (o.base_learning_rate, o.weight_decay, o.momentum, o.trust_coefficient,
            o.base_ema, o.warmup_epochs) == (0.2, 1.5e-6, 0.9, 1e-3, 0.996, None)
    assert (c.data.source, c.data.image_size, c.data.num_examples) == (
        "imagenet_fh", 224, IMAGENET_TRAIN_IMAGES)
    assert (c.batch_size, c.num_epochs, c.num_steps) == (4096, 1000, None)
    assert c.augment.view1 is None and c.augment.view2 is None  # official per-view settings


def reference_schedules(steps, *, num_epochs, images, batch, base_lr, base_ema):
    """Independent float64 NumPy statement of the official ImageNet recipe."""
    warmup = (num_epochs // 100) * images // batch
    total = num_epochs * images // batch
    peak = base_lr * batch / 256
    k = np.asarray(steps, np.float64)
    progress = np.minimum(np.maximum(k - warmup, 0), total - warmup) / (total - warmup)
    lr = np.where(k < warmup, peak * k / max(warmup, 1), peak * (1 + np.cos(np.pi * progress)) / 2)
    tau = 1 - (1 - base_ema) * (1 + np.cos(np.pi * np.minimum(k, total) / total)) / 2
    return warmup, total, lr, tau


def config_schedules(num_epochs: int):
    config = load_config(spec_of("detcon_b_imagenet.py"), f"--config.num_epochs={num_epochs}")
    assert config.num_epochs == num_epochs
    warmup, total = trainer.derive_steps(config, config.data.num_examples)
    lr = optim.learning_rate_schedule(
        base_learning_rate=config.optim.base_learning_rate, batch_size=config.batch_size,
        total_steps=total, warmup_steps=warmup)
    tau = optim.target_ema_schedule(base_ema=config.optim.base_ema, total_steps=total)
    return config, warmup, total, jax.jit(jax.vmap(lr)), jax.jit(jax.vmap(tau))


def test_imagenet_schedule_matches_official_golden_at_100_epochs(golden_dir):
    golden = np.load(golden_dir / "sched_100ep.npz")
    config, warmup, total, lr, tau = config_schedules(100)
    assert config.batch_size == int(golden["batch_size"])
    assert (warmup, total) == (int(golden["warmup_steps"]), int(golden["max_steps"]))
    steps = golden["steps"].astype(np.int32)
    # Same float32 arithmetic as the official code: agreement to float32 rounding of the
    # schedules' ~5 operations (a ratio, a cosine, a product), at the scale of the peak LR
    # (1 + cos cancels near the end) and of tau (1).
    lr_tol = f32_tolerance(1, depth=5, magnitude=float(np.max(golden["lr"])))
    np.testing.assert_allclose(np.asarray(lr(steps)), golden["lr"], rtol=0, atol=lr_tol)
    np.testing.assert_allclose(np.asarray(tau(steps)), golden["tau"], rtol=0,
                               atol=f32_tolerance(1, depth=5))


@pytest.mark.parametrize("num_epochs,expected_warmup_epochs", [(100, 1), (300, 3), (1000, 10)])
def test_imagenet_schedule_follows_the_official_rule(num_epochs, expected_warmup_epochs):
    config, warmup, total, lr, tau = config_schedules(num_epochs)
    ref_warmup, ref_total, _, _ = reference_schedules(
        [0], num_epochs=num_epochs, images=IMAGENET_TRAIN_IMAGES, batch=4096, base_lr=0.2,
        base_ema=0.996)
    assert (warmup, total) == (ref_warmup, ref_total)
    assert warmup == expected_warmup_epochs * IMAGENET_TRAIN_IMAGES // 4096
    probes = [0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, total // 3, total // 2,
              total - 2, total - 1, total, total + 7]
    probes += list(np.random.default_rng(num_epochs).integers(0, total, 20))
    steps = np.unique(np.asarray(probes, np.int64))
    _, _, ref_lr, ref_tau = reference_schedules(
        steps, num_epochs=num_epochs, images=IMAGENET_TRAIN_IMAGES, batch=4096, base_lr=0.2,
        base_ema=0.996)
    got_lr = np.asarray(lr(steps.astype(np.int32)), np.float64)
    got_tau = np.asarray(tau(steps.astype(np.int32)), np.float64)
    # float32 implementation vs float64 formula: the rounding of ~5 operations at the scale
    # of the peak LR (3.2) and of tau (1).
    np.testing.assert_allclose(got_lr, ref_lr, rtol=0,
                               atol=f32_tolerance(1, depth=5, magnitude=3.2))
    np.testing.assert_allclose(got_tau, ref_tau, rtol=0, atol=f32_tolerance(1, depth=5))
    assert got_lr[steps == warmup][0] == pytest.approx(3.2, rel=1e-6)  # peak right after warm-up
    assert got_lr[steps == total][0] == 0.0 and got_tau[steps == total][0] == 1.0
