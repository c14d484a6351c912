"""``config.init_checkpoint``: a new run starts from an imported encoder (online and target).

The encoder is a tiny ResNet in the layout ``convert haiku-to-orbax`` writes (an
encoder-only orbax checkpoint); the state built from it has that encoder in the online and
the target network and a fresh initialisation everywhere else. A released-layout Haiku
ResNet-18 ``.npy`` is another architecture than the smoke config's tiny ResNet: one line
naming the key, the file and the mismatching array, exit status 2; so is a missing path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import smoke_config

from detcon_jax import checkpoint, interop, model, step, warm_start
from detcon_jax.config import ConfigError


def _fresh_state(config):
    optimizer = step.make_optimizer(config, step.make_schedules(
        config, total_steps=8, warmup_steps=0))
    return step.create_train_state(config, jax.random.PRNGKey(config.seed), optimizer=optimizer)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """An encoder-only orbax directory (haiku-to-orbax's layout) of the smoke config's
    encoder, with values no initialisation gives; returns (directory, encoder variables)."""
    config = smoke_config()
    state = jax.eval_shape(lambda: _fresh_state(config))
    rng = np.random.default_rng(0)
    encoder = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype),
                           {"params": state.online_params["encoder"],
                            "batch_stats": state.online_batch_stats["encoder"]})
    out = tmp_path_factory.mktemp("imported")
    writer = checkpoint.Checkpointer(out / "checkpoints", keep=1,
                                     signature={"imported": "haiku"})
    try:
        writer.save(0, {"online_params": {"encoder": encoder["params"]},
                        "online_batch_stats": {"encoder": encoder["batch_stats"]}},
                    data_position=0)
    finally:
        writer.close()
    return str(out), encoder


def _assert_equal_trees(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_encoder_comes_from_the_checkpoint_the_rest_is_fresh(imported):
    path, encoder = imported
    config = smoke_config()
    fresh = _fresh_state(config)
    variables = warm_start.load(path, jax.eval_shape(lambda: fresh))
    state = warm_start.apply(fresh, variables)
    for network in ("online", "target"):
        params = getattr(state, f"{network}_params")
        stats = getattr(state, f"{network}_batch_stats")
        _assert_equal_trees(params["encoder"], encoder["params"])
        _assert_equal_trees(stats["encoder"], encoder["batch_stats"])
        rest = {k: v for k, v in params.items() if k != "encoder"}
        fresh_rest = {k: v for k, v in getattr(fresh, f"{network}_params").items()
                      if k != "encoder"}
        assert rest, network  # projector and predictor heads
        _assert_equal_trees(rest, fresh_rest)
    _assert_equal_trees(state.opt_state, fresh.opt_state)
    _assert_equal_trees((state.step, state.rng), (fresh.step, fresh.rng))


def test_an_encoder_of_another_architecture_is_named(tmp_path):
    # The released layout of a full ResNet-18 (two blocks per group, 64..512 channels).
    net = model.ResNet(depth=18)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
    variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
    hk_params, hk_state = interop.flax_to_haiku(variables, root="res_net18")
    npy = tmp_path / "resnet18.npy"
    np.save(npy, {**hk_params, **hk_state}, allow_pickle=True)
    config = smoke_config()
    with pytest.raises(ConfigError) as error:
        warm_start.load(str(npy), jax.eval_shape(lambda: _fresh_state(config)))
    text = str(error.value)
    assert text.startswith(f"config key 'init_checkpoint': {npy}: encoder ") and "\n" not in text
    assert "shape" in text or "another architecture" in text, text


@pytest.mark.slow
@pytest.mark.parametrize("which", ["missing", "not_an_encoder"])
def test_bad_init_checkpoint_is_one_line_and_exit_2(which, tmp_path):
    source = tmp_path / which
    if which == "not_an_encoder":
        source.mkdir()  # an empty directory: no checkpoint in it
    workdir = tmp_path / "never"
    proc = run_cli(workdir, f"--config.init_checkpoint={source}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: config key 'init_checkpoint': {source}: "), errors[0]
    assert "Traceback" not in proc.stderr and not workdir.exists()
