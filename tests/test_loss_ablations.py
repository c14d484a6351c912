"""The paper's loss ablations (config ``loss.*``) against a float64 definition of each switch.

``_definition`` writes the DetCon objective from its definition, in float64, as one dense
membership test per (query ROI, key ROI) pair: which keys are positives, which take part
in the softmax. It shares no code with ``detcon_jax.losses``; the memory-lean loss
(float32) must equal it in value and gradients for every combination of

- ``negatives_group_size`` (config ``negatives='group'``): keys only from the query's block
  of consecutive images;
- ``local_negatives`` (config ``same_image_negatives``): the own image's other masks are
  negatives, or are removed;
- ``cross_view``: positives in the other view and both views' keys (official), or
  positives and keys within the query's own view ("without two views").

At 8 fake devices, ``'group'`` with the per-device batch equals the official
``use_replicator_loss=False`` formulation: each device runs the official loss on its own
images and the losses and parameter gradients are averaged with ``pmean``, as the
official ``_update_fn`` does.

Tolerances: the float32 error scale of the loss (tests/tolerances.py): logits are D-term
dot products of unit vectors, at most ``1 / temperature`` in size (T >= 0.1 here), and each
row's log-sum-exp runs over the 2 B R keys of both views, at most 2 x 6 x 4 x 8 terms; then
means. Value and gradients agree with float64 to that relative to their scale (``_RTOL``);
the switches move the loss by orders of magnitude more (checked).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_module, smoke_config
from tolerances import f32_tolerance

from detcon_jax import config as config_lib
from detcon_jax import losses as L
from detcon_jax import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
_RTOL = f32_tolerance(2 * 6 * 4 * 8, depth=3, magnitude=1 / 0.1)  # see the module docstring


def _definition(p1, p2, t1, t2, pi1, pi2, ti1, ti2, *, temperature, local_negatives=True,
                cross_view=True, group_size=None):
    """DetCon loss from its definition, dense, in the dtype of the inputs (float64 here).

    For query ROI ``(b, r)`` of view ``v`` and key ROI ``(c, s)`` of key view ``w``:
    positive iff ``c == b``, ``w`` is the positive view (the other view, or ``v`` itself
    without cross-view) and the ids match; the key is excluded from the softmax iff ``c`` is
    outside ``b``'s group, or ``w`` is the non-positive view and ``(c, s)`` is an own-image
    ROI with the query's id, or (without local negatives) ``(c, s)`` is an own-image ROI
    that is not a positive. Loss of a ROI = log-sum-exp over the keys taking part - mean of
    the positive logits, weighted by [has a positive] / (times its id was drawn in its
    view); mean over ``B * R``; summed over the two views as queries.
    """
    batch, rois, _ = p1.shape
    g = batch if group_size is None else group_size

    def normalize(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    p1, p2, t1, t2 = map(normalize, (p1, p2, t1, t2))
    image = jnp.arange(batch)
    same_image = (image[:, None] == image[None, :])[:, None, None, :, None]   # b . . c .
    same_group = (image[:, None] // g == image[None, :] // g)[:, None, None, :, None]

    def direction(p, pind, keys, kinds):
        # keys [W, B, R, D] with kinds[w] True for the positive view.
        t = jnp.stack([k for k, _ in keys])
        tind = jnp.stack([i for _, i in keys])
        is_pos_view = jnp.asarray(kinds)[None, None, :, None, None]
        logits = jnp.einsum("brk,wcsk->brwcs", p, t) / temperature
        id_match = pind[:, :, None, None, None] == tind[None, None]
        positive = same_image & is_pos_view & id_match
        excluded = (~same_group) | (same_image & ~is_pos_view & id_match)
        if not local_negatives:
            excluded = excluded | (same_image & ~positive)
        # A large finite number instead of -inf keeps rows without any key finite (their
        # weight is 0 anyway) and their gradients free of NaN.
        lse = jax.nn.logsumexp(jnp.where(excluded, -1e30, logits), axis=(2, 3, 4))
        num_pos = jnp.sum(positive, axis=(2, 3, 4))
        pos = jnp.sum(jnp.where(positive, logits, 0.0), axis=(2, 3, 4)) / jnp.maximum(num_pos, 1)
        duplicates = jnp.sum(pind[:, :, None] == pind[:, None, :], axis=-1)
        per_roi = jnp.where(num_pos > 0, (lse - pos) / duplicates, 0.0)
        return jnp.mean(per_roi)

    if cross_view:
        return (direction(p1, pi1, [(t2, ti2), (t1, ti1)], [True, False])
                + direction(p2, pi2, [(t1, ti1), (t2, ti2)], [True, False]))
    return direction(p1, pi1, [(t1, ti1)], [True]) + direction(p2, pi2, [(t2, ti2)], [True])


def _case(seed, batch, rois=4, dim=8, num_ids=5):
    rng = np.random.default_rng(seed)
    emb = [rng.normal(size=(batch, rois, dim)).astype(np.float32) for _ in range(4)]
    ids = [rng.integers(0, num_ids, size=(batch, rois)).astype(np.int32) for _ in range(2)]
    # Online and target share ids per view, as in training; few ids -> duplicates and ids
    # absent from the other view (rows with weight 0).
    return emb, (ids[0], ids[1], ids[0], ids[1])


def _definition_value_and_grads(emb, ids, **kwargs):
    with jax.enable_x64(True):
        emb64 = [jnp.asarray(e, jnp.float64) for e in emb]
        value, grads = jax.value_and_grad(
            lambda *e: _definition(*e, *ids, **kwargs), argnums=(0, 1, 2, 3))(*emb64)
        return float(value), [np.asarray(g) for g in grads]


def _lean_value_and_grads(fn, emb, ids, **kwargs):
    value, grads = jax.jit(jax.value_and_grad(
        lambda *e: fn(*e, *ids, **kwargs), argnums=(0, 1, 2, 3)))(*emb)
    return float(value), [np.asarray(g) for g in grads]


def _assert_close(value, grads, ref_value, ref_grads):
    np.testing.assert_allclose(value, ref_value, rtol=_RTOL)
    for g, rg in zip(grads, ref_grads, strict=True):
        scale = np.max(np.abs(rg))
        assert np.max(np.abs(g - rg)) <= _RTOL * scale, (np.max(np.abs(g - rg)), scale)


# ----------------------------------------------------------------------------- definition


def test_definition_is_the_official_loss_at_the_defaults():
    """The float64 definition at the defaults is the official formulation (direct port)."""
    emb, ids = _case(0, batch=6)
    for local in (True, False):
        ref = float(L.detcon_b_loss_reference(*emb, *ids, temperature=0.2,
                                              local_negatives=local))
        value, _ = _definition_value_and_grads(emb, ids, temperature=0.2,
                                               local_negatives=local)
        np.testing.assert_allclose(ref, value, rtol=_RTOL)


@pytest.mark.parametrize("group_size", [None, 1, 2, 3])
@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize("cross_view", [True, False])
def test_lean_detcon_b_equals_definition(group_size, local_negatives, cross_view):
    emb, ids = _case(1, batch=6)
    kwargs = dict(temperature=0.2, local_negatives=local_negatives, cross_view=cross_view)
    ref_value, ref_grads = _definition_value_and_grads(emb, ids, group_size=group_size,
                                                       **kwargs)
    for num_chunks in {None, group_size or 6}:  # one chunk and one image per chunk
        value, grads = _lean_value_and_grads(L.detcon_b_loss, emb, ids, num_chunks=num_chunks,
                                             negatives_group_size=group_size, **kwargs)
        _assert_close(value, grads, ref_value, ref_grads)


def test_each_switch_changes_the_loss():
    """Each switch moves the definition's value far beyond the tolerance (the tests above
    would fail if the lean loss ignored it)."""
    emb, ids = _case(2, batch=6)
    base = dict(temperature=0.2)
    default, _ = _definition_value_and_grads(emb, ids, **base)
    for switch in (dict(group_size=2), dict(local_negatives=False), dict(cross_view=False)):
        value, _ = _definition_value_and_grads(emb, ids, **base, **switch)
        assert abs(value - default) > 100 * _RTOL * abs(default), switch
    # The groups really restrict the negatives: a group of the whole batch is 'global'.
    whole, _ = _definition_value_and_grads(emb, ids, group_size=6, **base)
    assert whole == pytest.approx(default, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("switches", [dict(), dict(negatives_group_size=2),
                                      dict(local_negatives=False), dict(cross_view=False)])
def test_detcon_s_equals_definition_with_one_shared_network(switches):
    emb, ids = _case(3, batch=4)
    z1, z2 = emb[:2]
    definition_kwargs = dict(switches)
    definition_kwargs["group_size"] = definition_kwargs.pop("negatives_group_size", None)
    with jax.enable_x64(True):
        z64 = [jnp.asarray(z, jnp.float64) for z in (z1, z2)]
        ref_value, ref_grads = jax.value_and_grad(
            lambda a, b: _definition(a, b, a, b, *ids, temperature=0.3, **definition_kwargs),
            argnums=(0, 1))(*z64)
    value, grads = jax.jit(jax.value_and_grad(
        lambda a, b: L.detcon_s_loss(a, b, ids[0], ids[1], temperature=0.3, **switches),
        argnums=(0, 1)))(z1, z2)
    _assert_close(float(value), [np.asarray(g) for g in grads], float(ref_value),
                  [np.asarray(g) for g in ref_grads])


def test_detcon_s_within_view_positive_is_the_roi_itself():
    """Without two views, DetCon-S's positive logit is the ROI with itself: 1 / temperature."""
    _, ids = _case(4, batch=3)
    # As in training, ROIs with the same id in a view pool the same mask: identical vectors.
    rng = np.random.default_rng(4)
    table = rng.normal(size=(2, 3, 5, 8)).astype(np.float32)  # [view, image, id, D]
    z1, z2 = (np.take_along_axis(table[v], ids[v][:, :, None], axis=1) for v in (0, 1))
    z1n = z1 / np.linalg.norm(z1, axis=-1, keepdims=True)
    z2n = z2 / np.linalg.norm(z2, axis=-1, keepdims=True)
    t = 0.5
    loss = float(L.detcon_s_loss(z1, z2, ids[0], ids[1], temperature=t, cross_view=False))
    expected = 0.0
    for z, ind in ((z1n, ids[0]), (z2n, ids[1])):
        logits = np.einsum("brk,csk->brcs", z, z).astype(np.float64) / t
        flat = logits.reshape(*logits.shape[:2], -1)
        lse = np.log(np.sum(np.exp(flat), axis=-1))
        dups = np.sum(ind[:, :, None] == ind[:, None, :], axis=-1)
        expected += np.mean((lse - 1.0 / t) / dups)
    np.testing.assert_allclose(loss, expected, rtol=_RTOL)


@pytest.mark.slow
def test_simclr_and_byol_switches():
    rng = np.random.default_rng(5)
    z1, z2, q1, q2 = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4))
    n = [x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (z1, z2, q1, q2)]
    t = 0.5

    def nce(queries, keys_pos, keys_extra, group):
        total = 0.0
        for b in range(len(queries)):
            members = [c for c in range(len(queries)) if c // group == b // group]
            terms = [queries[b] @ keys_pos[c] / t for c in members]
            if keys_extra is not None:
                terms += [queries[b] @ keys_extra[c] / t for c in members if c != b]
            total += np.log(np.sum(np.exp(terms))) - queries[b] @ keys_pos[b] / t
        return total / len(queries)

    for group in (6, 2):
        size = None if group == 6 else group
        cross = nce(n[0], n[1], n[0], group) + nce(n[1], n[0], n[1], group)
        within = nce(n[0], n[0], None, group) + nce(n[1], n[1], None, group)
        np.testing.assert_allclose(
            float(L.simclr_loss(z1, z2, temperature=t, negatives_group_size=size)),
            cross, rtol=_RTOL)
        np.testing.assert_allclose(
            float(L.simclr_loss(z1, z2, temperature=t, cross_view=False,
                                negatives_group_size=size)), within, rtol=_RTOL)
    # BYOL without two views: each prediction regresses its own view's target.
    within = np.mean(np.sum((n[0] - n[2]) ** 2, -1) + np.sum((n[1] - n[3]) ** 2, -1))
    cross = np.mean(np.sum((n[0] - n[3]) ** 2, -1) + np.sum((n[1] - n[2]) ** 2, -1))
    np.testing.assert_allclose(float(L.byol_loss(z1, z2, q1, q2, cross_view=False)), within,
                               rtol=_RTOL)
    np.testing.assert_allclose(float(L.byol_loss(z1, z2, q1, q2)), cross, rtol=_RTOL)


@pytest.mark.slow
def test_reference_group_is_the_mean_of_per_group_official_losses():
    emb, ids = _case(6, batch=6)
    args = (*emb, *ids)
    per_group = [float(L.detcon_b_loss_reference(*(a[k:k + 2] for a in args)))
                 for k in (0, 2, 4)]
    grouped = float(L.detcon_b_loss_reference(*args, negatives_group_size=2))
    # The same three group losses, averaged in another order: 3-term means.
    np.testing.assert_allclose(grouped, np.mean(per_group), rtol=f32_tolerance(3, depth=2))


def test_group_size_errors():
    emb, ids = _case(0, batch=6)
    for fn in (L.detcon_b_loss, L.detcon_b_loss_reference):
        with pytest.raises(ValueError, match="negatives_group_size=4 must be a positive divisor"):
            fn(*emb, *ids, negatives_group_size=4)
    with pytest.raises(ValueError, match="num_chunks=2 must divide group size 3"):
        L.detcon_b_loss(*emb, *ids, negatives_group_size=3, num_chunks=2)


def test_auto_num_chunks_with_groups():
    # B=1024, R=16, groups of 128: one image row costs 16 * 2 * 128 * 16 = 2**16 logits.
    assert L.auto_num_chunks(1024, 16, negatives_group_size=128) == 4   # 256 images = 2**24
    assert L.auto_num_chunks(1024, 16, num_devices=8, negatives_group_size=128) == 1
    assert L.auto_num_chunks(8, 2, max_elements=1, negatives_group_size=4) == 4
    assert L.auto_num_chunks(1024, 16, negatives_group_size=1024) == L.auto_num_chunks(1024, 16)


# ----------------------------------------------------------------------------- memory


def test_grouped_loss_holds_only_its_groups_logits():
    """Compiled temporary memory (value and grads), one chunk, 8 groups against the global
    loss: the global loss holds several [B, R, 2, B, R] logit-sized buffers (logits,
    softmax, their cotangents), the grouped one the same buffers over [G, g, R, 2, g, R],
    an eighth of them, plus small [B, R, ...] arrays. Deterministic (XLA's buffer
    assignment), not a timing."""
    batch, rois, dim = 64, 16, 32
    emb = jax.ShapeDtypeStruct((batch, rois, dim), jnp.float32)
    ids = jax.ShapeDtypeStruct((batch, rois), jnp.int32)

    def temp_bytes(**kwargs):
        f = jax.jit(jax.value_and_grad(lambda *a: L.detcon_b_loss(*a, num_chunks=1, **kwargs),
                                       argnums=(0, 1, 2, 3)))
        return f.lower(emb, emb, emb, emb, ids, ids, ids, ids).compile() \
            .memory_analysis().temp_size_in_bytes

    full_logits = batch * rois * 2 * batch * rois * 4
    global_bytes = temp_bytes()
    grouped_bytes = temp_bytes(negatives_group_size=batch // 8)
    assert global_bytes >= full_logits, (global_bytes, full_logits)
    assert grouped_bytes < global_bytes / 4, (grouped_bytes, global_bytes)


# ----------------------------------------------------------------------------- 8 devices


_DEVICES_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from detcon_jax import losses as L
    from tests.test_loss_ablations import _definition, _RTOL

    assert len(jax.devices()) == 8
    group, rois, d_in, d = 2, 4, 6, 8  # group = the per-device batch
    batch = 8 * group
    rng = np.random.default_rng(0)
    # A linear "online network" W maps inputs to predictions; targets carry no gradient.
    x1, x2 = (rng.normal(size=(batch, rois, d_in)).astype(np.float32) for _ in range(2))
    t1, t2 = (rng.normal(size=(batch, rois, d)).astype(np.float32) for _ in range(2))
    w = rng.normal(size=(d_in, d)).astype(np.float32)
    i1, i2 = (rng.integers(0, 4, size=(batch, rois)).astype(np.int32) for _ in range(2))
    data = (x1, x2, t1, t2, i1, i2)

    def check(value, grad, ref_value, ref_grad, what):
        assert abs(float(value) - ref_value) <= _RTOL * abs(ref_value), (what, value, ref_value)
        err = float(np.max(np.abs(np.asarray(grad) - ref_grad)))
        assert err <= _RTOL * float(np.max(np.abs(ref_grad))), (what, err)

    def lean(size, **kw):
        chunks = L.auto_num_chunks(batch, rois, num_devices=8, negatives_group_size=size)
        def loss(w, x1, x2, t1, t2, i1, i2):
            return L.detcon_b_loss(x1 @ w, x2 @ w, t1, t2, i1, i2, i1, i2,
                                   negatives_group_size=size, num_chunks=chunks, **kw)
        return jax.jit(jax.value_and_grad(loss))

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in data]

    # The official use_replicator_loss=False step: every device computes the official loss
    # on its own images and the gradient of its parameters; both are pmean-ed.
    # check_vma=False: per-device semantics as under the official pmap (no automatic psum
    # of the replicated parameter's gradient), so the pmean below is the official reduction.
    official_mesh = Mesh(np.array(jax.devices()), ("i",))
    def official_step(w, x1, x2, t1, t2, i1, i2):
        loss, grad = jax.value_and_grad(lambda w: L.detcon_b_loss_reference(
            x1 @ w, x2 @ w, t1, t2, i1, i2, i1, i2))(w)
        return jax.lax.pmean(loss, "i"), jax.lax.pmean(grad, "i")
    official = jax.jit(jax.shard_map(official_step, mesh=official_mesh,
                                     in_specs=(P(),) + (P("i"),) * 6, out_specs=(P(), P()),
                                     check_vma=False))
    off_value, off_grad = official(w, *data)

    with jax.enable_x64(True):
        def definition(w, size, **kw):
            w = jnp.asarray(w, jnp.float64)
            return _definition(jnp.asarray(x1, jnp.float64) @ w, jnp.asarray(x2, jnp.float64) @ w,
                               jnp.asarray(t1, jnp.float64), jnp.asarray(t2, jnp.float64),
                               i1, i2, i1, i2, temperature=0.1, group_size=size, **kw)
        def ref(size, **kw):
            value, grad = jax.value_and_grad(lambda w: definition(w, size, **kw))(
                jnp.asarray(w, jnp.float64))
            return float(value), np.asarray(grad)
        def_group, def_global = ref(group), ref(None)
        def_within = ref(group, cross_view=False, local_negatives=False)

    value, grad = lean(group)(w, *sharded)
    check(value, grad, *def_group, "lean group vs definition")
    check(off_value, off_grad, *def_group, "official per-device vs definition")
    check(value, grad, float(off_value), np.asarray(off_grad), "lean group vs official")
    value, grad = lean(None)(w, *sharded)
    check(value, grad, *def_global, "lean global vs definition")
    assert abs(def_global[0] - def_group[0]) > 100 * _RTOL * abs(def_group[0])
    value, grad = lean(group, cross_view=False, local_negatives=False)(w, *sharded)
    check(value, grad, *def_within, "lean group within-view vs definition")

    # Groups of the per-device batch need no other device's keys: like the official
    # formulation, the compiled program gathers nothing (only the mean is all-reduced).
    hlo = lean(group).lower(w, *sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    assert "all-gather" in lean(None).lower(w, *sharded).compile().as_text()
    print("OK")
""")


@pytest.mark.slow
def test_group_at_8_devices_equals_official_per_device_loss(repo_root):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    # tests/ too: the script imports this module, which imports the tests' helpers.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo_root), str(repo_root / "tests"), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], env=env, cwd=repo_root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------- config + step


def _smoke_config():
    return smoke_config()


def _config(method="detcon_b", **loss):
    config = _smoke_config()
    config.method = method
    if method in ("byol", "simclr"):
        config.masks.source = "none"
    for key, value in loss.items():
        config.loss[key] = value  # negatives_group_size is a typed placeholder(int)
    return config


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.py")),
                         ids=lambda p: p.name)
def test_every_experiment_defaults_to_the_official_loss(path):
    loss = load_module(path).get_config().loss
    assert (loss.negatives, loss.negatives_group_size, loss.same_image_negatives,
            loss.cross_view) == ("global", None, True, True)


@pytest.mark.parametrize("method", ["detcon_b", "detcon_s", "byol", "simclr"])
def test_config_accepts_the_switches_where_they_mean_something(method):
    config_lib.validate(_config(method, cross_view=False))
    if method != "byol":
        config_lib.validate(_config(method, negatives="group", negatives_group_size=2))
    if method in ("detcon_b", "detcon_s"):
        config_lib.validate(_config(method, same_image_negatives=False))


@pytest.mark.parametrize("method, loss, key, message", [
    ("detcon_b", dict(negatives="device"), "loss.negatives", "must be one of"),
    ("detcon_b", dict(negatives="group"), "loss.negatives_group_size", "must be set"),
    ("detcon_b", dict(negatives="group", negatives_group_size=0),
     "loss.negatives_group_size", "must be >= 1"),
    ("detcon_b", dict(negatives="group", negatives_group_size=3),
     "loss.negatives_group_size", "must divide batch_size=8"),
    ("detcon_b", dict(negatives_group_size=2), "loss.negatives_group_size",
     "only used with loss.negatives='group'"),
    ("byol", dict(negatives="group", negatives_group_size=2), "loss.negatives",
     "does not apply to method 'byol'"),
    ("byol", dict(same_image_negatives=False), "loss.same_image_negatives",
     "does not apply to method 'byol'"),
    ("simclr", dict(same_image_negatives=False), "loss.same_image_negatives",
     "does not apply to method 'simclr'"),
])
def test_config_errors_name_the_key(method, loss, key, message):
    with pytest.raises(config_lib.ConfigError, match=rf"config key '{key}'.*{message}"):
        config_lib.validate(_config(method, **loss))


@pytest.mark.parametrize("key, value", [("loss.cross_view", "no"),
                                        ("loss.same_image_negatives", 1),
                                        ("loss.negatives_group_size", "two")])
def test_locked_base_config_refuses_a_switch_of_another_type(key, value):
    from detcon_jax import configs

    with pytest.raises(config_lib.ConfigError, match=rf"config key '{key}'"):
        configs.apply_overrides(_smoke_config(), {key: value})


@pytest.mark.parametrize("method, loss_fn", [
    ("detcon_b", "detcon_b_loss"), ("detcon_s", "detcon_s_loss"),
    ("byol", "byol_loss"), ("simclr", "simclr_loss")])
def test_train_step_passes_the_switches_to_the_loss(monkeypatch, method, loss_fn):
    """The step hands the config's switches to the loss (traced only: the loss functions'
    behaviour is what the tests above check)."""
    loss = dict(cross_view=False)
    if method != "byol":
        loss.update(negatives="group", negatives_group_size=2)
    if method in ("detcon_b", "detcon_s"):
        loss["same_image_negatives"] = False
    config = _config(method, **loss)
    config_lib.validate(config)
    calls = []
    original = getattr(L, loss_fn)

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(step_lib.losses, loss_fn, recording)
    schedules = step_lib.make_schedules(config, total_steps=4, warmup_steps=0)
    optimizer = step_lib.make_optimizer(config, schedules)
    state = jax.eval_shape(lambda: step_lib.create_train_state(
        config, jax.random.PRNGKey(0), optimizer=optimizer))
    size, batch = config.data.image_size, config.batch_size
    batch_spec = {
        "view1": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
        "view2": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
        "mask1": jax.ShapeDtypeStruct((batch, size, size, 1), jnp.uint8),
        "mask2": jax.ShapeDtypeStruct((batch, size, size, 1), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    jax.eval_shape(step_lib.make_train_step(config, schedules, optimizer), state, batch_spec)
    assert calls and calls[0]["cross_view"] is False
    if method != "byol":
        assert calls[0]["negatives_group_size"] == 2
    if method in ("detcon_b", "detcon_s"):
        assert calls[0]["local_negatives"] is False
        assert calls[0]["num_chunks"] == L.auto_num_chunks(
            batch, config.masks.num_samples, negatives_group_size=2)
