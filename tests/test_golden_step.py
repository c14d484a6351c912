"""The official DetCon-B training step, reproduced end to end (``golden/step``).

The golden holds the full official training state (online and target networks with their
BatchNorm state, LARS momentum) of a small bottleneck ResNet with the official heads and
an online classifier, and the inputs and outputs of consecutive official steps. We bring
the official state over with ``interop.train_state_from_haiku``, build the step from a
config read off ``meta.json`` (``golden_helpers.step_config``: photometric augmentation
off through its probabilities, a user setting), feed the golden's views, segmentations,
labels and mask ids (``mask_ids1/2`` in the batch: the step's user-facing way of fixing
the ids) and compare everything after every step: loss and its parts, each parameter,
BatchNorm average/hidden and counter, momentum, lr and tau, and the monitors.

Two runs: each step from the official state before it (teacher forcing: every step is
checked in isolation) and all steps chained from ``init.npz`` (errors may compound).

Tolerances. Every leaf is compared by the Euclidean norm of its difference ``err`` (float64),
against ``3 * spread + floor``:

- ``spread``: the float32 error scale of *this* computation on *these* inputs, measured:
  the largest distance between our result and our results on inputs multiplied by
  ``1 + 2**-18 * N(0, 1)`` (a few float32 ulps; 8 such runs). It matters because the
  gradient is not a smooth function of rounding here: a ReLU whose pre-activation lies
  within float32 error of 0 switches between runs (step 0 of the reference set has one in
  the last block, exactly 0.0 in our float32 and +1.4e-6 in float64), which changes the
  momentum of every encoder array by about 1 %; both sides of such a kink are correct
  float32 results, and the perturbed runs show both. Away from kinks ``spread`` is
  ~1e-7 relative.
- ``floor`` (rounding that the spread cannot show, e.g. exact zeros):
  parameters (online and target) ``4 eps |p| + 2**-16 |p - p_before|`` (rounding of the
  stored value, plus 128-ulp relative error of the step's change: LARS weights move by
  ~1e-4 of their norm per step, so only the change carries the step's error);
  momentum ``2**-16 |mu| + 2**-20 max|mu| sqrt(n)`` (relative error of a gradient, plus an
  absolute floor for gradients that are mathematically zero, e.g. the bias of a linear
  layer followed by BatchNorm, whose value is rounding noise of ~1e-8);
  BatchNorm ``average``/``hidden`` ``2**-16 |x|``; counters exactly; lr and tau to
  ``4 eps`` relative; loss, ``repr_loss``, ``classif_loss`` to 1e-5 relative (plus the
  spread in the chained run, where earlier steps' kinks compound).

A wrong transpose, exclusion or order anywhere (the EMA towards the old online
parameters, weight decay or trust ratio on BatchNorm parameters, classifier gradients into
the encoder, pooled BatchNorm statistics of the two views, ...) moves some leaf by orders
of magnitude more than these bounds.
"""

from __future__ import annotations

import golden_helpers as gh
import jax
import numpy as np
import optax
import pytest
from conftest import SHARED

from detcon_jax import interop
from detcon_jax import masks as masks_lib
from detcon_jax import step as step_lib

GOLDEN = SHARED / "golden" / "step"
EPS = float(np.finfo(np.float32).eps)
PERTURBATION = 2.0 ** -18
NUM_PERTURBED = 8
LOSS_RTOL = 1e-5
LOSSES = ("loss", "repr_loss", "classif_loss")
# Logged monitors of the online network's view 1; means are compared on the scale of the std.
MONITORS = {"proj_mean": "proj_std", "proj_std": "proj_std",
            "normalized_proj_std": "normalized_proj_std", "pred_mean": "pred_std",
            "pred_std": "pred_std", "normalized_pred_std": "normalized_pred_std"}


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        raise FileNotFoundError(f"golden step vectors not found at {GOLDEN} (set DETCON_SHARED)")
    return gh.load_step_golden(GOLDEN)


@pytest.fixture(scope="module")
def setup(golden):
    config, total_steps, warmup_steps = gh.step_config(golden["meta"], golden["steps"][0])
    schedules = step_lib.make_schedules(config, total_steps=total_steps,
                                        warmup_steps=warmup_steps)
    optimizer = step_lib.make_optimizer(config, schedules)
    train_step = jax.jit(step_lib.make_train_step(config, schedules, optimizer))
    return config, optimizer, train_step


def _state(golden, config, optimizer, index):
    return interop.train_state_from_haiku(
        gh.state_before(golden, index), config, optimizer=optimizer,
        step=int(golden["steps"][index]["global_step"]), where=f"golden state before {index}")


def _batches(golden, config, index):
    """The golden batch of step ``index``, then ``NUM_PERTURBED`` copies with ulp-level noise."""
    batch = gh.step_batch(golden["steps"][index], config.masks.fh_index)
    out = [batch]
    for seed in range(NUM_PERTURBED):
        rng = np.random.default_rng([index, seed])
        noisy = dict(batch)
        for key in ("view1", "view2"):
            noise = PERTURBATION * rng.standard_normal(batch[key].shape)
            noisy[key] = (batch[key] * (1.0 + noise)).astype(np.float32)
        out.append(noisy)
    return out


def _as_haiku(state, golden):
    root = golden["meta"]["encoder"]["haiku_module"]
    return interop.train_state_to_haiku(state, encoder_root=root)


def _norm(x):
    return float(np.linalg.norm(np.asarray(x, np.float64).ravel()))


def _state_problems(index, ours, perturbed, golden, before):
    """Every leaf of the state after step ``index`` against the golden (see the module doc)."""
    after = {k[len("after/"):]: v for k, v in golden["steps"][index].items()
             if k.startswith("after/")}
    assert set(ours) == set(after), sorted(set(ours) ^ set(after))[:5]
    mu_max = max(float(np.max(np.abs(v))) for k, v in after.items() if k.startswith("opt_mu/"))
    problems = []
    for key in sorted(after):
        want, got = after[key], ours[key]
        assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
        if key.endswith("/counter"):
            if int(got) != int(want):
                problems.append((np.inf, f"{key}: {int(got)} != {int(want)}"))
            continue
        err = _norm(got - want)
        spread = max(_norm(p[key] - got) for p in perturbed)
        part = key.split("/", 1)[0]
        if part.endswith("_params"):
            floor = 4 * EPS * _norm(want) + 2.0 ** -16 * _norm(want - before[key])
        elif part == "opt_mu":
            floor = 2.0 ** -16 * _norm(want) + 2.0 ** -20 * mu_max * np.sqrt(want.size)
        else:  # BatchNorm average / hidden
            floor = 2.0 ** -16 * _norm(want)
        bound = 3 * spread + floor
        if not err <= bound:
            problems.append((err / bound, f"{key}: |diff| {err:.3g} > bound {bound:.3g} "
                                          f"(spread {spread:.3g}, |golden| {_norm(want):.3g})"))
    return [text for _, text in sorted(problems, reverse=True)]


def _metric_problems(index, metrics, perturbed_metrics, step, *, loss_spread):
    logs = {k[len("logs/"):]: float(v) for k, v in step.items() if k.startswith("logs/")}
    problems = []

    def spread(name):
        return max(abs(float(m[name]) - float(metrics[name])) for m in perturbed_metrics)

    for name in LOSSES:
        got, want = float(metrics[name]), logs[name]
        bound = LOSS_RTOL * abs(want) + (3 * spread(name) if loss_spread else 0.0)
        if not abs(got - want) <= bound:
            problems.append(f"step {index} {name}: {got!r} vs official {want!r}")
    for name in ("lr", "tau"):
        got, want = float(metrics[name]), float(step[name])
        if not abs(got - want) <= 4 * EPS * abs(want) or logs[name] != float(step[name]):
            problems.append(f"step {index} {name}: {got!r} vs official {want!r}")
    for name, scale in MONITORS.items():
        got, want = float(metrics[name]), logs[name]
        if not abs(got - want) <= 3 * spread(name) + 2.0 ** -16 * abs(logs[scale]):
            problems.append(f"step {index} {name}: {got!r} vs official {want!r}")
    return problems


def _lars_count(state):
    """The LARS schedule's update count (it must advance with the official global step)."""
    return int(optax.tree_utils.tree_get(state.opt_state, "count"))


def _run(train_step, state, batches):
    results = [train_step(state, batch) for batch in batches]
    return results[0], results[1:]


def test_official_state_maps_both_ways(golden, setup):
    """init.npz -> TrainState -> official layout gives back every array bit for bit."""
    config, optimizer, _ = setup
    state = _state(golden, config, optimizer, 0)
    assert int(state.step) == int(golden["steps"][0]["global_step"])
    np.testing.assert_array_equal(
        state.rng, step_lib.init_keys(jax.random.PRNGKey(config.seed))[2])
    back = _as_haiku(state, golden)
    assert set(back) == set(golden["init"])
    for key, want in golden["init"].items():
        assert back[key].dtype == want.dtype, key
        np.testing.assert_array_equal(back[key], want, err_msg=key)
    n_params = sum(x.size for x in jax.tree.leaves(state.online_params))
    assert n_params == int(golden["steps"][0]["logs/n_params"])


def test_official_state_layouts_and_refusals(golden, setup, tmp_path):
    """Nested ``{part: {module: {name}}}`` in a pickled .npy gives the same state as the flat
    .npz; a wrong ``hidden`` or a missing array is refused with its name."""
    config, optimizer, _ = setup
    flat = golden["init"]
    nested = {}
    for key, value in flat.items():
        part, rest = key.split("/", 1)
        module, name = rest.rsplit("/", 1)
        nested.setdefault(part, {}).setdefault(module, {})[name] = value
    np.save(tmp_path / "state.npy", nested, allow_pickle=True)
    np.savez(tmp_path / "state.npz", **flat)
    want = jax.tree.leaves(_state(golden, config, optimizer, 0))
    for path in (tmp_path / "state.npy", tmp_path / "state.npz"):
        got = interop.load_haiku_train_state(path, config)
        for a, b in zip(jax.tree.leaves(got), want, strict=True):
            np.testing.assert_array_equal(a, b)
    hidden = next(k for k in flat if k.startswith("target_state/") and k.endswith("/hidden"))
    with pytest.raises(ValueError, match="hidden is not average"):
        interop.train_state_from_haiku({**flat, hidden: flat[hidden] + 1.0}, config)
    kernel = next(k for k in flat if k.startswith("opt_mu/") and k.endswith("/w"))
    with pytest.raises(ValueError, match=f"missing key {kernel}"):
        interop.train_state_from_haiku({k: v for k, v in flat.items() if k != kernel}, config)


def test_forward_outputs_of_the_official_state(golden, setup):
    """Network outputs on step 0's inputs with the initial state, train mode, one view per call
    as the official forward (the golden's ``forward/...``)."""
    config, optimizer, _ = setup
    step = golden["steps"][0]
    state = _state(golden, config, optimizer, 0)
    network = step_lib.make_network(config)
    size = step["inputs/view1"].shape[1]

    @jax.jit
    def forward(params, stats, images, segmentation, ids):
        binary = masks_lib.binary_masks(segmentation, downsample=step_lib.ENCODER_STRIDE,
                                        max_mask_id=config.masks.max_mask_id)
        masks = masks_lib.gather_masks(binary, ids)
        outputs, _ = network.apply({"params": params, "batch_stats": stats}, images, masks,
                                   train=True, mutable=["batch_stats"])
        return outputs

    assert size % step_lib.ENCODER_STRIDE == 0
    for name, params, stats in (("online", state.online_params, state.online_batch_stats),
                                ("target", state.target_params, state.target_batch_stats)):
        for view in (1, 2):
            fh = config.masks.fh_index
            seg = step[f"inputs/fh_segmentations{view}"][..., fh:fh + 1]
            out = forward(params, stats, step[f"inputs/view{view}"], seg,
                          step[f"inputs/mask_ids{view}"])
            for output in ("projection", "prediction", "logits"):
                want = step[f"forward/{name}/{output}_view{view}"]
                got = np.asarray(out[output])
                # A forward has no kinks: float32 error, relative to the output's scale.
                np.testing.assert_allclose(got, want, rtol=0, atol=2.0 ** -16 * np.abs(want).max(),
                                           err_msg=f"{name} {output} view {view}")


@pytest.mark.slow
def test_each_step_from_the_official_state(golden, setup):
    """Teacher forcing: step k from the official state before it, compared after it."""
    config, optimizer, train_step = setup
    problems = []
    for index, step in enumerate(golden["steps"]):
        before = gh.state_before(golden, index)
        state = _state(golden, config, optimizer, index)
        (new, metrics), perturbed = _run(train_step, state, _batches(golden, config, index))
        assert int(new.step) == _lars_count(new) == int(step["global_step"]) + 1
        problems += _metric_problems(index, metrics, [m for _, m in perturbed], step,
                                     loss_spread=False)
        problems += [f"step {index} {p}" for p in _state_problems(
            index, _as_haiku(new, golden), [_as_haiku(s, golden) for s, _ in perturbed],
            golden, before)]
    assert not problems, "\n".join(problems[:20])


def test_all_steps_chained_from_init(golden, setup):
    """All steps from init.npz, our own state carried from step to step."""
    config, optimizer, train_step = setup
    state = _state(golden, config, optimizer, 0)
    # Each perturbed run carries its own state (and so its own kinks) through the steps.
    perturbed_states = [state] * NUM_PERTURBED
    problems = []
    for index, step in enumerate(golden["steps"]):
        assert int(state.step) == int(step["global_step"])
        batches = _batches(golden, config, index)
        state, metrics = train_step(state, batches[0])
        perturbed = [train_step(s, b)
                     for s, b in zip(perturbed_states, batches[1:], strict=True)]
        perturbed_states = [s for s, _ in perturbed]
        assert _lars_count(state) == int(step["global_step"]) + 1
        problems += _metric_problems(index, metrics, [m for _, m in perturbed], step,
                                     loss_spread=True)
        problems += [f"step {index} {p}" for p in _state_problems(
            index, _as_haiku(state, golden), [_as_haiku(s, golden) for s in perturbed_states],
            golden, gh.state_before(golden, index))]
    assert not problems, "\n".join(problems[:20])

