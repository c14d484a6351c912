"""Tests for detcon_jax.optim against the official code's golden LARS trajectory and schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import assert_state_close, f32_tolerance

from detcon_jax import optim

# Haiku module -> Flax module, Haiku parameter -> Flax parameter.
_MODULES = {"linear": "Dense_0", "batchnorm": "BatchNorm_0", "conv": "Conv_0", "zero": "Dense_1"}
_PARAMS = {"w": "kernel", "b": "bias", "scale": "scale", "offset": "bias"}


def _tree(npz, prefix):
    """Flax-named nested dict from the ``prefix/module/param`` entries of the golden file."""
    tree = {}
    for key in npz.files:
        if not key.startswith(prefix + "/"):
            continue
        _, module, param = key.split("/")
        tree.setdefault(_MODULES[module], {})[_PARAMS[param]] = jnp.asarray(npz[key])
    assert tree, f"no '{prefix}/' entries in golden file"
    return tree


def test_lars_matches_official_trajectory(golden_dir):
    """Six LARS steps with a changing learning rate, within 1e-6 relative of the official run.

    The learning rate is fed through a schedule indexed by optax's update count, which is how
    the training step uses it; step 2 has an all-zero conv gradient (trust ratio must be 1) and
    ``zero/w`` starts at zero (parameter norm 0, trust ratio 1).
    """
    g = np.load(golden_dir / "lars_case0.npz")
    lrs = jnp.asarray(g["lrs"])
    assert not np.any(g["grad2/conv/w"]), "golden step 2 should carry an all-zero conv gradient"
    tx = optim.lars(
        lambda count: lrs[count],
        weight_decay=float(g["weight_decay"]),
        momentum=float(g["momentum"]),
        trust_coefficient=float(g["eta"]),
    )
    params = _tree(g, "init")
    state = tx.init(params)
    update = jax.jit(tx.update)
    # float32 error scale (tests/tolerances.py): each update takes two norms over an array
    # (n = its size) and ~6 operations (decay, trust ratio, momentum, lr), and the
    # parameters carry every earlier step's rounding.
    largest = max(int(np.size(v)) for m in params.values() for v in m.values())
    for step in range(len(lrs)):
        updates, state = update(_tree(g, f"grad{step}"), state, params)
        params = optax.apply_updates(params, updates)
        want = _tree(g, f"after{step}")
        for module in want:
            for name in want[module]:
                assert_state_close(params[module][name], want[module][name],
                                   f32_tolerance(largest, depth=6 * (step + 1)),
                                   err_msg=f"step {step} {module}/{name}")


def test_lars_constant_learning_rate_and_default_hyperparameters():
    """A float learning rate works and gives -lr * g' on the first step (momentum buffer 0)."""
    params = {"Dense_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones((2,))}}
    grads = {"Dense_0": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.full((2,), 3.0)}}
    tx = optim.lars(0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    g = 0.5 + 1.5e-6 * 2.0
    trust = 1e-3 * 4.0 / (2.0 * g)  # |p| = 4, |g'| = 2 g
    # A few float32 operations on small arrays: norms of 4 terms, ~6 operations.
    tol = f32_tolerance(4, depth=6)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1 * g * trust, rtol=tol)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.1 * 3.0, rtol=tol)


def test_exclusion_mask():
    params = {
        "encoder": {
            "initial_conv": {"kernel": 0},
            "initial_batchnorm": {"scale": 0, "bias": 0},
            "block_group_0": {"block_0": {
                "conv_0": {"kernel": 0},
                "batchnorm_0": {"scale": 0, "bias": 0},
                "shortcut_batchnorm": {"scale": 0, "bias": 0},
            }},
        },
        "projector": {"Dense_0": {"kernel": 0, "bias": 0}, "BatchNorm_0": {"scale": 0},
                      "LayerNorm_0": {"scale": 0}},
        # Everything under a module named *norm* is excluded, even a nested kernel (Haiku
        # matches the full module path).
        "GroupNorm_wrapper": {"Dense_0": {"kernel": 0}},
        "Conv_0": {"kernel": 0, "bias": 0},
    }
    mask = optim.lars_exclusion_mask(params)
    enc = mask["encoder"]
    assert enc["initial_conv"]["kernel"] is True
    assert enc["initial_batchnorm"] == {"scale": False, "bias": False}
    block = enc["block_group_0"]["block_0"]
    assert block["conv_0"]["kernel"] is True
    assert block["batchnorm_0"] == {"scale": False, "bias": False}
    assert block["shortcut_batchnorm"] == {"scale": False, "bias": False}
    assert mask["projector"] == {
        "Dense_0": {"kernel": True, "bias": False},
        "BatchNorm_0": {"scale": False},
        "LayerNorm_0": {"scale": False},
    }
    assert mask["GroupNorm_wrapper"]["Dense_0"]["kernel"] is False
    assert mask["Conv_0"] == {"kernel": True, "bias": False}


def test_excluded_leaves_skip_decay_and_trust_ratio():
    """An excluded leaf's update is exactly -lr * grad; an adapted one is not."""
    params = {"BatchNorm_0": {"scale": jnp.full((3,), 5.0)}, "Dense_0": {"kernel": jnp.ones((3,))}}
    grads = {"BatchNorm_0": {"scale": jnp.full((3,), 0.7)}, "Dense_0": {"kernel": jnp.ones((3,))}}
    tx = optim.lars(1.0, weight_decay=0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    # -lr x g for the excluded scale (one rounding); the kernel's trust ratio of 3-term norms.
    np.testing.assert_allclose(updates["BatchNorm_0"]["scale"], -0.7, rtol=f32_tolerance(1))
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -1e-3,
                               rtol=f32_tolerance(3, depth=6))


def test_schedules_match_official_100_epochs(golden_dir):
    g = np.load(golden_dir / "sched_100ep.npz")
    warmup, total = optim.derive_steps(
        num_epochs=100, images_per_epoch=1281167, batch_size=int(g["batch_size"]))
    assert (warmup, total) == (int(g["warmup_steps"]), int(g["max_steps"]))
    lr_fn = jax.jit(optim.learning_rate_schedule(
        base_learning_rate=float(g["base_learning_rate"]), batch_size=int(g["batch_size"]),
        total_steps=total, warmup_steps=warmup))
    tau_fn = jax.jit(optim.target_ema_schedule(base_ema=float(g["base_ema"]), total_steps=total))
    steps = jnp.asarray(g["steps"], jnp.int32)
    lr = jax.vmap(lr_fn)(steps)
    tau = jax.vmap(tau_fn)(steps)
    # The schedules' ~5 float32 operations (a ratio, a cosine, products), at the scale of
    # the peak LR (1 + cos cancels towards the end) and of tau (1).
    lr_atol = f32_tolerance(1, depth=5, magnitude=float(np.max(g["lr"])))
    np.testing.assert_allclose(lr, g["lr"], rtol=0, atol=lr_atol)
    np.testing.assert_allclose(tau, g["tau"], rtol=0, atol=f32_tolerance(1, depth=5))
    # Python ints work too (un-jitted), and give the same values.
    np.testing.assert_allclose(
        [float(optim.learning_rate_schedule(
            base_learning_rate=0.2, batch_size=4096, total_steps=total,
            warmup_steps=warmup)(int(s))) for s in g["steps"]], g["lr"], rtol=0, atol=lr_atol)


def test_learning_rate_schedule_shape():
    lr = optim.learning_rate_schedule(
        base_learning_rate=0.2, batch_size=512, total_steps=100, warmup_steps=10)
    peak = 0.2 * 512 / 256
    # ~5 float32 operations at the scale of the peak LR (tests/tolerances.py).
    tol = f32_tolerance(1, depth=5, magnitude=peak)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(lr(5), peak * 0.5, rtol=0, atol=tol)
    np.testing.assert_allclose(lr(10), peak, rtol=0, atol=tol)
    np.testing.assert_allclose(lr(55), peak * 0.5, rtol=0, atol=tol)  # half-way: the cosine
    np.testing.assert_allclose(lr(100), 0.0, rtol=0, atol=tol)
    np.testing.assert_allclose(lr(1000), 0.0, rtol=0, atol=tol)
    # No warm-up: the first step already uses the peak learning rate.
    lr0 = optim.learning_rate_schedule(
        base_learning_rate=0.2, batch_size=512, total_steps=100, warmup_steps=0)
    np.testing.assert_allclose(lr0(0), peak, rtol=0, atol=tol)
    np.testing.assert_allclose(lr0(50), peak * 0.5, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.learning_rate_schedule(
            base_learning_rate=0.2, batch_size=512, total_steps=10, warmup_steps=10)


def test_target_ema_schedule_shape():
    tau = optim.target_ema_schedule(base_ema=0.99, total_steps=100)
    tol = f32_tolerance(1, depth=5)  # ~5 float32 operations on values near 1
    np.testing.assert_allclose(tau(0), 0.99, rtol=0, atol=tol)
    np.testing.assert_allclose(tau(50), 0.995, rtol=0, atol=tol)
    np.testing.assert_allclose(tau(100), 1.0, rtol=0, atol=tol)
    np.testing.assert_allclose(tau(200), 1.0, rtol=0, atol=tol)


@pytest.mark.parametrize(
    ("num_epochs", "want"),
    [
        (100, (312, 31278)),
        (300, (938, 93835)),  # 3 warm-up epochs
        (1000, (3127, 312784)),  # 10 warm-up epochs
        (99, (0, 30965)),  # fewer than 100 epochs: no warm-up
        (250, (625, 78196)),  # 250 // 100 = 2 warm-up epochs
    ],
)
def test_derive_steps_epochs(num_epochs, want):
    assert optim.derive_steps(
        num_epochs=num_epochs, images_per_epoch=1281167, batch_size=4096) == want
    # Cross-check the floors by exact rational arithmetic.
    images = 1281167
    assert want[1] == num_epochs * images // 4096
    assert want[0] == (num_epochs // 100) * images // 4096


def test_derive_steps_errors():
    with pytest.raises(ValueError, match="batch_size"):
        optim.derive_steps(num_epochs=1, images_per_epoch=10, batch_size=0)
    with pytest.raises(ValueError, match="num_epochs"):
        optim.derive_steps(num_epochs=1.5, images_per_epoch=10, batch_size=2)
    with pytest.raises(ValueError, match="no full step"):
        optim.derive_steps(num_epochs=1, images_per_epoch=10, batch_size=64)
