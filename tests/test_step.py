"""The pure training step on the smoke model (in-process, 1 device, 32 px).

Checks the official update order and bookkeeping: online and target networks start from
different keys; after a step the target equals ``t + (1 - tau) (online_new - t)`` with
``tau = tau(step 0)``; the LARS count and the step advance together; the target's
BatchNorm statistics move (it runs in train mode); the linear probe only counts examples
with a label; the one-network methods carry no target.

The step is jitted exactly as the train CLI does it (``sharding.jit_train_step`` on a
1-device mesh, the smoke config, ``cli_helpers.STEPS`` total steps as the train tests), so
with a persistent compilation cache (CI sets ``JAX_COMPILATION_CACHE_DIR``) the DetCon-B
program compiled here is the one the CLI tests load. The step donates its input state, so
each call gets a copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import STEPS as TOTAL_STEPS  # the train tests' compiled program
from conftest import smoke_config
from tolerances import assert_state_close, f32_tolerance, max_rel_err

from detcon_jax import augment, losses, sharding
from detcon_jax import config as config_lib
from detcon_jax import step as step_lib


def _batch(labels: np.ndarray, size: int = 32, batch: int = 8) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(1)
    return {
        "view1": rs.rand(batch, size, size, 3).astype(np.float32),
        "view2": rs.rand(batch, size, size, 3).astype(np.float32),
        "mask1": rs.randint(0, 4, (batch, size, size, 1)).astype(np.uint8),
        "mask2": rs.randint(0, 4, (batch, size, size, 1)).astype(np.uint8),
        "label": np.asarray(labels, np.int32),
    }


def _setup(method: str = "detcon_b"):
    config = smoke_config()
    config.method = method
    if method in ("byol", "simclr"):
        config.masks.source = "none"
    config_lib.validate(config)
    # No warm-up: lr(0) > 0, so the first update moves the online parameters.
    schedules = step_lib.make_schedules(config, total_steps=TOTAL_STEPS, warmup_steps=0)
    optimizer = step_lib.make_optimizer(config, schedules)
    mesh = sharding.make_mesh({sharding.DATA_AXIS: 1}, devices=jax.devices()[:1])

    def create():  # as the train CLI creates its state (seed 0)
        return step_lib.create_train_state(
            config, jax.random.PRNGKey(config.seed), optimizer=optimizer)

    state = sharding.create_sharded(create, mesh)
    jitted = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer, num_devices=1), mesh)

    def train_step(state, batch):
        # The jitted step donates its state: keep the caller's copy alive.
        return jitted(jax.tree.map(jnp.copy, state), sharding.global_batch(batch, mesh))

    return config, schedules, state, train_step


@pytest.fixture(scope="module")
def detcon_b():
    return _setup("detcon_b")


# float32 error scale of the smoke network (tests/tolerances.py): its longest reduction is a
# BatchNorm's over the batch's first feature map (8 images x 16 x 16 = 2048 terms) and a
# value passes ~16 layers (stem, 8 convolutions, shortcuts, projector and predictor). The
# loss adds the per-example regression terms (8 x 2).
SIZE = 32
CELLS = step_lib._feature_size(SIZE) ** 2
STATS_TOL = f32_tolerance(2048, depth=16)
LOSS_TOL = f32_tolerance(2048, depth=16 + 1)


def _step_views(config, state, batch):
    """The step's augmented views (its key plumbing: fold_in(rng, step), first of 3 splits)."""
    rng = jax.random.fold_in(state.rng, state.step)
    configs = [None if c is None else dict(c)
               for c in (config.augment.view1, config.augment.view2)]
    return augment.augment_views(jax.random.split(rng, 3)[0], jnp.asarray(batch["view1"]),
                                 jnp.asarray(batch["view2"]), view1_config=configs[0],
                                 view2_config=configs[1])


def _two_calls(config, params, stats, views, masks):
    """The official forward: one network call per view in train mode, statistics chained."""
    network = step_lib.make_network(config)

    @jax.jit
    def run(params, stats, views, masks):
        o1, s = network.apply({"params": params, "batch_stats": stats}, views[0], masks[0],
                              train=True, mutable=["batch_stats"])
        o2, s = network.apply({"params": params, **s}, views[1], masks[1], train=True,
                              mutable=["batch_stats"])
        return (o1, o2), s["batch_stats"]

    return run(params, stats, views, masks)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_online_and_target_start_from_different_keys(detcon_b):
    _, _, state, _ = detcon_b
    online = jax.tree.leaves(state.online_params)
    target = jax.tree.leaves(state.target_params)
    assert len(online) == len(target)
    # Random (non-constant) initialisers differ between the two networks.
    assert any(not np.array_equal(a, b) for a, b in zip(online, target, strict=True))


@pytest.mark.slow
def test_one_step_update_order_and_bookkeeping(detcon_b):
    config, schedules, state, train_step = detcon_b
    batch = _batch(np.arange(8) % 10)
    new, metrics = train_step(state, batch)
    assert int(new.step) == 1
    assert int(new.opt_state[-1].count) == 1  # LR schedule count == training step
    tau = float(schedules.target_ema(0))
    # The same schedule functions, jitted into the step vs called here: ~5 float32 operations.
    np.testing.assert_allclose(float(metrics["tau"]), tau, rtol=f32_tolerance(1, depth=5))
    assert float(metrics["lr"]) > 0
    np.testing.assert_allclose(float(metrics["lr"]), float(schedules.learning_rate(0)),
                               rtol=f32_tolerance(1, depth=5))
    # Target EMA towards the *updated* online parameters.
    expected = jax.tree.map(lambda t, o: t + (1 - tau) * (o - t),
                            state.target_params, new.online_params)
    # t + (1 - tau) (o - t): three float32 operations per element.
    for got, want in zip(_leaves(new.target_params), _leaves(expected), strict=True):
        assert_state_close(got, want, f32_tolerance(1, depth=3))
    # Online parameters moved; both networks' BatchNorm moving mean and variance moved
    # (not only the update counter).
    assert any(not np.array_equal(a, b) for a, b in
               zip(_leaves(state.online_params), _leaves(new.online_params), strict=True))
    for before, after in ((state.online_batch_stats, new.online_batch_stats),
                          (state.target_batch_stats, new.target_batch_stats)):
        for name in ("mean", "var"):
            old = np.asarray(before["encoder"]["initial_batchnorm"][name])
            moved = np.asarray(after["encoder"]["initial_batchnorm"][name])
            assert np.abs(moved - old).max() > 1e-3 * np.abs(old).max(), name
    # The target ran in train mode on the step's two views: its encoder statistics are
    # those of the official two consecutive calls (view 1, then view 2; the encoder's do
    # not depend on the masks), to float32 rounding (STATS_TOL).
    views = _step_views(config, state, batch)
    whole = jnp.ones((8, 1, CELLS), jnp.float32)
    _, want = _two_calls(config, state.target_params, state.target_batch_stats, views,
                         (whole, whole))
    got_stats = jax.tree_util.tree_leaves_with_path(new.target_batch_stats["encoder"])
    for (path, got), ref in zip(got_stats, jax.tree.leaves(want["encoder"]), strict=True):
        if np.asarray(ref).dtype.kind == "i":
            assert int(got) == int(ref) == 2, path  # two updates from the init's counter 0
        else:
            assert max_rel_err(got, ref) <= STATS_TOL, jax.tree_util.keystr(path)
    for key in ("loss", "repr_loss", "classif_loss", "top1_accuracy", "proj_std",
                "normalized_proj_std", "pred_std", "normalized_pred_std", "lr", "tau"):
        assert np.isfinite(float(metrics[key])), key
    # One float32 addition.
    np.testing.assert_allclose(float(metrics["loss"]),
                               float(metrics["repr_loss"] + metrics["classif_loss"]),
                               rtol=f32_tolerance(2))


def test_mask_metrics_and_loss_inputs_match_the_step(detcon_b):
    """The step's mask metrics are those of the ids and grids its inputs function returns
    for the same state and batch (the pictures show what the step trained on)."""
    config, _, state, train_step = detcon_b
    batch = _batch(np.arange(8) % 10)
    batch["mask2"][:4] = batch["mask1"][:4]  # some images whose views share ids
    _, metrics = train_step(state, batch)
    inputs = jax.jit(step_lib.make_loss_inputs(config, num_images=8))(
        step_lib.step_key(state), batch)
    ids1, ids2 = np.asarray(inputs["ids1"]), np.asarray(inputs["ids2"])
    want = np.mean([np.isin(ids1[b], ids2[b]).mean() + np.isin(ids2[b], ids1[b]).mean()
                    for b in range(8)]) / 2
    assert 0 < want < 1, (ids1, ids2)  # both kinds of region occur in this batch
    np.testing.assert_allclose(float(metrics["positive_fraction"]), want, rtol=1e-6)
    for v in (1, 2):
        cells = np.asarray(inputs[f"cells{v}"])
        assert cells.shape == (8, 1, 1)  # 32 px: a 1x1 feature grid
        assert float(metrics[f"mask_ids_view{v}"]) == 1.0
        # Each sampled id is on the feature grid (the only one, at 32 px).
        np.testing.assert_array_equal(np.asarray(inputs[f"ids{v}"]),
                                      np.broadcast_to(cells.reshape(8, 1), (8, 16)))
    np.testing.assert_array_equal(inputs["mask1"], batch["mask1"][..., 0])
    # The views are the step's augmented ones (another program: float32 rounding of
    # the few operations per pixel of the photometrics).
    views = _step_views(config, state, batch)
    for got, want_view in zip((inputs["view1"], inputs["view2"]), views, strict=True):
        np.testing.assert_allclose(got, want_view, atol=f32_tolerance(1, depth=30))


def test_probe_ignores_unlabelled_examples(detcon_b):
    _, _, state, train_step = detcon_b
    _, unlabelled = train_step(state, _batch(np.full(8, -1)))
    assert float(unlabelled["classif_loss"]) == 0.0
    assert float(unlabelled["loss"]) == float(unlabelled["repr_loss"])
    # The representation loss does not depend on the labels.
    _, labelled = train_step(state, _batch(np.arange(8) % 10))
    # The same program on the same views (LOSS_TOL: only the summation order may differ).
    np.testing.assert_allclose(float(labelled["repr_loss"]), float(unlabelled["repr_loss"]),
                               rtol=LOSS_TOL)
    assert float(labelled["classif_loss"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["detcon_s"])
def test_one_network_methods_have_no_target(method):
    _, _, state, train_step = _setup(method)
    assert state.target_params is None and state.target_batch_stats is None
    assert "predictor" not in state.online_params
    new, metrics = train_step(state, _batch(np.arange(8) % 10))
    assert new.target_params is None and "tau" not in metrics
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_byol_one_whole_image_mask():
    """BYOL pools each view over one mask, the whole image, whatever the segmentation says;
    its loss is `byol_loss` of the online predictions and target projections of the
    official two consecutive calls per network, to float32 rounding (LOSS_TOL of |loss|)."""
    config, _, state, train_step = _setup("byol")
    batch = _batch(np.arange(8) % 10)
    new, metrics = train_step(state, batch)
    assert int(new.step) == 1
    # At 96 px (a 3 x 3 feature grid) as at 32 px (1 x 1): one all-ones mask per view.
    for size in (96, SIZE):
        segmentation = np.random.RandomState(2).randint(0, 4, (8, size, size, 1))
        masks, ids, _ = step_lib._sample_view_masks(config, jax.random.PRNGKey(0),
                                                 jnp.asarray(segmentation, jnp.uint8), size)
        cells = step_lib._feature_size(size) ** 2
        np.testing.assert_array_equal(masks, np.ones((8, 1, cells), np.float32))
        np.testing.assert_array_equal(ids, np.zeros((8, 1), np.int32))
    views = _step_views(config, state, batch)
    (o1, o2), _ = _two_calls(config, state.online_params, state.online_batch_stats, views,
                             (masks, masks))
    (t1, t2), _ = _two_calls(config, state.target_params, state.target_batch_stats, views,
                             (masks, masks))
    expected = float(losses.byol_loss(o1["prediction"], o2["prediction"], t1["projection"],
                                      t2["projection"]))
    assert abs(float(metrics["repr_loss"]) - expected) <= LOSS_TOL * abs(expected)
