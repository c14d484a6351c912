"""The config package: the locked base config, config arguments, loading and one-line errors.

- The base holds the official DetCon-B ImageNet values and is locked: unknown keys and type
  changes fail where they are made; typed optionals accept None and their type.
- ``parse_arg`` types each value by its default; every misuse is one line naming it.
- ``configs.load`` reads a file as the train CLI does; each bad input (file, ``:ARG``, key,
  value) is one ``ConfigError`` line naming it.
- The train CLI prints each of those as one ``error:`` line, exits 2 and writes nothing;
  a short run whose warm-up exceeds it says the fix.
- The reproduction's train command builds exactly the config ``reproduce.load_config``
  builds, through the same flag parser.
- From a non-editable install (no ``experiments/``), ``bench step`` and ``reproduce`` run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import subprocess
import sys

import pytest
from absl import flags
from cli_helpers import REPO, subprocess_env
from ml_collections import config_dict, config_flags

from detcon_jax import config as config_lib
from detcon_jax import configs, reproduce

EXPERIMENTS = REPO / "experiments"


# --------------------------------------------------------------------------------------------
# The base config.


def test_base_config_holds_the_official_values_and_validates():
    c = configs.get_config()
    assert (c.method, c.model.depth, c.model.mlp_hidden_size, c.model.projection_size) == (
        "detcon_b", 50, 4096, 256)
    assert (c.optim.base_learning_rate, c.optim.weight_decay, c.optim.trust_coefficient,
            c.optim.momentum, c.optim.base_ema) == (0.2, 1.5e-6, 1e-3, 0.9, 0.996)
    assert (c.loss.temperature, c.masks.num_samples, c.batch_size) == (0.1, 16, 4096)
    assert c.data.num_examples == 1_281_167 and c.data.image_size == 224
    # Without a data path the ImageNet source is refused, naming the key.
    with pytest.raises(config_lib.ConfigError, match="data.path"):
        config_lib.validate(c)
    c.data.path = str(REPO)
    config_lib.validate(c)


def test_base_config_is_locked_and_typed():
    c = configs.get_config()
    with pytest.raises(AttributeError):
        c.optim.lerning_rate = 1.0
    with pytest.raises(TypeError):
        c.batch_size = "big"
    # Typed optionals: None by default, their type accepted, another type refused.
    assert c.model.blocks_per_group is None and c.optim.warmup_epochs is None
    c.model.blocks_per_group = (1, 1, 1, 1)
    with pytest.raises(TypeError):
        c.optim.warmup_epochs = "ten"
    # An optional set to None keeps its type for command-line overrides.
    c.data.num_examples = None
    c.data.num_examples = 5
    with pytest.raises(TypeError):
        c.data.num_examples = "five"


def test_each_call_returns_a_fresh_config():
    a = configs.get_config()
    a.model.depth = 18
    assert configs.get_config().model.depth == 50


# --------------------------------------------------------------------------------------------
# Config arguments.


def test_parse_arg_types_values_by_their_defaults():
    spec = dict(masks=configs.Choice("gt", "fh", "grid"), steps=300, lr=0.2, fast=False,
                name="x")
    assert configs.parse_arg(None, **spec).to_dict() == dict(
        masks="gt", steps=300, lr=0.2, fast=False, name="x")
    got = configs.parse_arg("fh,steps=12,lr=1,fast,name=y", **spec)
    assert got.to_dict() == dict(masks="fh", steps=12, lr=1.0, fast=True, name="y")
    assert isinstance(got.lr, float)
    assert configs.parse_arg("masks=grid,fast=false", **spec).masks == "grid"


@pytest.mark.parametrize("arg, message", [
    ("foo", "mask source must be one of ('gt', 'fh'), got 'foo'"),
    ("masks=foo", "mask source must be one of ('gt', 'fh'), got 'foo'"),
    ("steps=1.5", "steps must be an int, got '1.5'"),
    ("fast=maybe", "fast must be true or false, got 'maybe'"),
    ("stpes=3", "unknown key 'stpes'"),
    ("fh,gt", "'masks' is given twice"),
])
def test_parse_arg_errors_name_the_argument_and_key(arg, message):
    spec = dict(masks=configs.Choice("gt", "fh", name="mask source"), steps=3, fast=False)
    with pytest.raises(configs.ConfigArgError) as error:
        configs.parse_arg(arg, **spec)
    text = str(error.value)
    assert message in text and f"config argument {arg!r}" in text and "\n" not in text


# --------------------------------------------------------------------------------------------
# Loading.


def test_load_reads_a_file_with_its_argument_and_overrides(tmp_path):
    config = configs.load(f"{EXPERIMENTS / 'detcon_b_camvid.py'}:fh",
                          {"data.path": str(tmp_path), "optim.warmup_epochs": 0})
    assert config.masks.source == "fh" and config.data.source == "folder"
    assert config.optim.warmup_epochs == 0 and config.is_locked
    config_lib.validate(config)


@pytest.mark.parametrize("spec, overrides, message", [
    ("experiments/nope.py", {}, "--config=experiments/nope.py: config file not found"),
    ("experiments/detcon_b_camvid.py:foo", {},
     "--config=experiments/detcon_b_camvid.py:foo: config argument 'foo': mask source must be "
     "one of ('gt', 'fh', 'grid', 'learned'), got 'foo'"),
    ("experiments/smoke.py", {"optim.lerning_rate": 1.0},
     "unknown config key 'optim.lerning_rate' (did you mean 'optim.base_learning_rate'?)"),
    ("experiments/smoke.py", {"batch_size": "big"}, "config key 'batch_size': "),
])
def test_load_errors_are_one_line_naming_the_input(spec, overrides, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(config_lib.ConfigError) as error:
        configs.load(spec, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_broken_config_file_is_named(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(:\n")
    with pytest.raises(config_lib.ConfigError, match=f"cannot load {path}: SyntaxError"):
        configs.load(str(path))


def test_experiments_load_without_jax_or_tensorflow():
    code = (
        "import sys, pathlib\n"
        "from detcon_jax import configs\n"
        f"for path in sorted(pathlib.Path({str(EXPERIMENTS)!r}).glob('*.py')):\n"
        "    configs.load(str(path))\n"
        "heavy = sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules)\n"
        "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# The train CLI's one-line errors (issue 22).


def _train(tmp_path: pathlib.Path, *flags_: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detcon_jax.train", f"--workdir={tmp_path / 'never'}", *flags_],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, tmp_path: pathlib.Path) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\\n" not in errors[0]
    assert not (tmp_path / "never").exists()
    return errors[0]


@pytest.mark.parametrize("flags_, expected", [
    (("--config=experiments/nope.py",),
     "error: --config=experiments/nope.py: config file not found: experiments/nope.py"),
    (("--config=experiments/nope.py", "--config.seed=1"),
     "error: --config=experiments/nope.py: config file not found: experiments/nope.py"),
    (("--config=experiments/detcon_b_camvid.py:foo",),
     "error: --config=experiments/detcon_b_camvid.py:foo: config argument 'foo': mask source "
     "must be one of ('gt', 'fh', 'grid', 'learned'), got 'foo'"),
    (("--config=experiments/smoke.py", "--config.optim.lerning_rate=1"),
     "error: unknown config key 'optim.lerning_rate' (did you mean "
     "'optim.base_learning_rate'?)"),
    (("--config=experiments/smoke.py", "--config.batch_size=abc"),
     "error: config key 'batch_size': bad value 'abc'"),
])
def test_bad_config_input_is_one_line_and_exit_2(tmp_path, flags_, expected):
    line = _one_error_line(_train(tmp_path, *flags_), tmp_path)
    assert line.startswith(expected), line


@pytest.mark.slow
def test_warmup_longer_than_a_short_run_says_the_fix(tmp_path, data_dir):
    # CamVid's 367 images at batch 8: one warm-up epoch is 45 steps, more than the 12 asked.
    proc = _train(tmp_path, "--config=experiments/detcon_b_camvid.py",
                  f"--config.data.path={data_dir / 'camvid' / 'train'}",
                  "--config.batch_size=8", "--config.num_steps=12")
    line = _one_error_line(proc, tmp_path)
    assert "45 warm-up steps >= 12 total steps" in line, line
    assert "--config.optim.warmup_epochs=0" in line, line


@pytest.mark.slow
def test_data_path_at_the_dataset_root_names_the_split_to_give(tmp_path, data_dir):
    # CamVid's root holds train/ and val/, each with images/ and labels/.
    root = data_dir / "camvid"
    line = _one_error_line(_train(tmp_path, "--config=experiments/detcon_b_camvid.py",
                                  f"--config.data.path={root}"), tmp_path)
    assert line.startswith(f"error: config key 'data.path': {root} has no images/ folder"), line
    assert f"use e.g. --config.data.path={root / 'train'}" in line, line


# --------------------------------------------------------------------------------------------
# The reproduction's configs.


def _cli_config(command: list[str]) -> config_dict.ConfigDict:
    """The config the train CLI builds from ``command``'s flags (the same flag parser)."""
    argv = ["train", *[a for a in command[3:] if not a.startswith("--workdir")]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("spec", ["tiny", "small,num_steps=40,image_size=64,base_ema=0.95"])
def test_reproduce_train_command_builds_the_in_process_config(spec, tmp_path):
    budget = reproduce.parse_budget(spec)
    budget = dataclasses.replace(budget, pretrain_seed=7)
    for method in reproduce.METHODS[:-1]:
        command = reproduce.train_command(budget, method, str(tmp_path), "/tmp/w")
        assert command[3].startswith(f"--config={reproduce.PRETRAIN_CONFIG}:")
        want = reproduce.load_config(budget, method, str(tmp_path))
        assert _cli_config(command).to_dict() == want.to_dict(), method.name
        assert (want.seed, want.num_steps, want.data.image_size) == (
            7, budget.num_steps, budget.image_size)
    if "," in spec:
        assert (budget.num_steps, budget.image_size, budget.base_ema) == (40, 64, 0.95)


@pytest.mark.parametrize("spec, message", [
    ("huge", "budget must be one of ('full', 'small', 'tiny'), got 'huge'"),
    ("small,num_stpes=3", "unknown key 'num_stpes'"),
    ("small,num_steps=many", "num_steps must be an int"),
])
def test_bad_budget_is_one_line(spec, message):
    with pytest.raises(configs.ConfigArgError, match=message.replace("(", r"\(").replace(
            ")", r"\)")):
        reproduce.parse_budget(spec)


# --------------------------------------------------------------------------------------------
# From an installed package.


def _link_subset(source: pathlib.Path, dest: pathlib.Path, count: int) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in source.iterdir())[:count]
    for name in names:
        (dest / name).symlink_to(source / name)
    return names


@pytest.mark.slow
def test_bench_and_reproduce_run_from_a_non_editable_install(tmp_path, data_dir):
    # Build from a copy so that the checkout gets no build/ folder.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "detcon_jax", source / "detcon_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = subprocess_env(PYTHONPATH=str(site))

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, *args], cwd=away, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    where = run("-c", "import pathlib, detcon_jax; print(pathlib.Path(detcon_jax.__file__))")
    package = pathlib.Path(where.stdout.strip()).parent
    assert package == site / "detcon_jax"  # the installed copy, not the checkout
    assert not (package.parent / "experiments").exists()

    bench = run("-m", "detcon_jax.bench", "step", "--model=tiny", "--image_size=32",
                "--batch_size=2", "--mlp_hidden_size=32", "--projection_size=16",
                "--num_classes=10", "--num_masks=4", "--repeats=1", "--compilation_cache")
    result = json.loads(bench.stdout.strip().splitlines()[-1])
    assert result["name"] == "train_step" and math.isfinite(result["first_loss"])

    camvid, cifar = tmp_path / "camvid", tmp_path / "cifar10"
    for split, count in (("train", 4), ("val", 2)):
        names = _link_subset(data_dir / "camvid" / split / "images",
                             camvid / split / "images", count)
        (camvid / split / "labels").mkdir()
        for name in names:
            label = pathlib.Path(name).stem + ".png"
            (camvid / split / "labels" / label).symlink_to(
                data_dir / "camvid" / split / "labels" / label)
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (data_dir / "cifar10" / split).iterdir()):
            _link_subset(data_dir / "cifar10" / split / cls, cifar / split / cls, 2)
    out = tmp_path / "out"
    run("-m", "detcon_jax.reproduce", f"--camvid={camvid}", f"--cifar10={cifar}", f"--out={out}",
        "--budget=tiny", "--methods=byol")
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["byol"]
    command = results["methods"]["byol"]["train_command"]
    assert f"--config={package / 'reproduce' / 'pretrain_config.py'}:tiny" in command
    for row in results["methods"].values():
        assert all(math.isfinite(row[probe]) for probe in reproduce.PROBES), row
