"""Tests for detcon_jax.losses: official golden values, lean == reference, hand formulas."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_f32_close, f32_tolerance

from detcon_jax import losses as L

_KEYS = ("pred1", "pred2", "target1", "target2", "pind1", "pind2", "tind1", "tind2")



def _loss_tol(shape, temperature, loss):
    """The float32 error scale of a contrastive loss, relative to its value
    (tests/tolerances.py): logits are D-term dot products of unit vectors over the
    temperature (size 1 / T), each row's log-sum-exp runs over the 2 B R logits of both
    views (n = 2 B R D terms), then two means."""
    batch, rois, dim = shape
    return f32_tolerance(2 * batch * rois * dim, depth=3,
                         magnitude=(1 / temperature) / abs(float(loss)))


def _grad_tol(shape):
    """The same for gradients, relative to their largest entry: forward and backward."""
    batch, rois, dim = shape
    return f32_tolerance(2 * batch * rois * dim, depth=6)


def _max_rel(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


# ----------------------------------------------------------------------------- numpy oracles


def _np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _np_logsumexp(v):
    v = np.asarray(v)
    m = v.max()
    return m + np.log(np.sum(np.exp(v - m)))


def _np_detcon(p1, p2, t1, t2, pi1, pi2, ti1, ti2, temperature, local_negatives=True):
    """DetCon objective written from its definition, one ROI at a time, in float64."""
    p1, p2, t1, t2 = map(_np_normalize, (p1, p2, t1, t2))

    def half(p, t_other, t_same, pind, tind_other, tind_same):
        batch, rois, _ = p.shape
        total = 0.0
        for b in range(batch):
            for r in range(rois):
                positives = [s for s in range(rois) if tind_other[b, s] == pind[b, r]]
                if not positives:
                    continue
                terms = []
                for c in range(batch):
                    for s in range(rois):
                        if c != b or local_negatives or s in positives:
                            terms.append(p[b, r] @ t_other[c, s] / temperature)
                        same_id = tind_same[c, s] == pind[b, r]
                        if c != b or (local_negatives and not same_id):
                            terms.append(p[b, r] @ t_same[c, s] / temperature)
                pos = np.mean([p[b, r] @ t_other[b, s] / temperature for s in positives])
                duplicates = np.sum(pind[b] == pind[b, r])
                total += (_np_logsumexp(terms) - pos) / duplicates
        return total / (batch * rois)

    return half(p1, t2, t1, pi1, ti2, ti1) + half(p2, t1, t2, pi2, ti1, ti2)


def _np_nce(q1, q2, k1, k2, temperature):
    """Symmetric InfoNCE / NT-Xent: positive = other view's key of the same image;
    negatives = other view's keys of other images and same view's keys of other images."""
    q1, q2, k1, k2 = map(_np_normalize, (q1, q2, k1, k2))

    def half(q, k_other, k_same):
        cross = q @ k_other.T / temperature
        same = q @ k_same.T / temperature
        np.fill_diagonal(same, -np.inf)
        logits = np.concatenate([cross, same], axis=1)
        lse = np.array([_np_logsumexp(row) for row in logits])
        return np.mean(lse - np.diag(cross))

    return half(q1, k2, k1) + half(q2, k1, k2)


def _random_case(seed, batch, rois, dim, num_ids):
    rng = np.random.default_rng(seed)
    emb = [rng.normal(size=(batch, rois, dim)).astype(np.float32) for _ in range(4)]
    ids = [rng.integers(0, num_ids, size=(batch, rois)).astype(np.int32) for _ in range(2)]
    # Online and target share ids per view, as in training; few ids -> duplicates and ids
    # missing from the other view.
    return (*emb, ids[0], ids[1], ids[0], ids[1])


# ----------------------------------------------------------------------------- golden


@pytest.mark.parametrize("case", [0, 1, 2, 3])
@pytest.mark.parametrize("variant", ["lean", "lean_one_image_chunks", "reference"])
def test_detcon_b_matches_official_golden(golden_dir, case, variant):
    data = np.load(golden_dir / f"loss_case{case}.npz")
    args = [data[k] for k in _KEYS]
    kwargs = dict(temperature=float(data["temperature"]),
                  local_negatives=bool(data["local_negatives"]))
    if variant == "reference":
        fn = L.detcon_b_loss_reference
    else:
        fn = L.detcon_b_loss
        if variant == "lean_one_image_chunks":
            kwargs["num_chunks"] = args[0].shape[0]
    loss, (g1, g2) = jax.jit(jax.value_and_grad(
        lambda a, b: fn(a, b, *args[2:], **kwargs), argnums=(0, 1)))(args[0], args[1])
    # float32 against the official float32 outputs: two summation orders.
    shape, temperature = args[0].shape, kwargs["temperature"]
    np.testing.assert_allclose(float(loss), float(data["loss"]),
                               rtol=_loss_tol(shape, temperature, data["loss"]))
    assert _max_rel(g1, data["grad_pred1"]) <= _grad_tol(shape)
    assert _max_rel(g2, data["grad_pred2"]) <= _grad_tol(shape)


def test_golden_cases_cover_both_options(golden_dir):
    """The golden set exercises local_negatives=False and a non-default temperature."""
    cases = [np.load(golden_dir / f"loss_case{c}.npz") for c in range(4)]
    assert any(not bool(c["local_negatives"]) for c in cases)
    assert any(float(c["temperature"]) != np.float32(0.1) for c in cases)


# ----------------------------------------------------------------------------- lean vs ref


@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize("num_chunks", [None, 2, 6])
def test_lean_equals_reference_value_and_all_grads(local_negatives, num_chunks):
    args = _random_case(0, batch=6, rois=5, dim=8, num_ids=6)
    # Make sure the case has duplicates and ids absent from the other view.
    p1_ids, p2_ids = args[4], args[5]
    assert any(len(set(row)) < len(row) for row in p1_ids)
    assert any(not set(a) >= set(b) for a, b in zip(p1_ids, p2_ids, strict=True))
    kwargs = dict(temperature=0.2, local_negatives=local_negatives)

    def value_and_grads(fn, **extra):
        return jax.jit(jax.value_and_grad(
            lambda *e: fn(*e, *args[4:], **kwargs, **extra), argnums=(0, 1, 2, 3)))(*args[:4])

    ref_loss, ref_grads = value_and_grads(L.detcon_b_loss_reference)
    loss, grads = value_and_grads(L.detcon_b_loss, num_chunks=num_chunks)
    tol = _loss_tol(args[0].shape, 0.2, ref_loss)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=tol)
    for g, rg in zip(grads, ref_grads, strict=True):
        assert _max_rel(g, np.asarray(rg)) <= _grad_tol(args[0].shape)
    # Both agree with the ROI-by-ROI float64 definition.
    expected = _np_detcon(*args, temperature=0.2, local_negatives=local_negatives)
    np.testing.assert_allclose(float(loss), expected, rtol=tol)


@pytest.mark.parametrize("local_negatives", [True, False])
def test_lean_handles_single_image_and_absent_ids(local_negatives):
    # B = 1: no other image supplies negatives.
    rng = np.random.default_rng(1)
    emb = [rng.normal(size=(1, 4, 8)).astype(np.float32) for _ in range(4)]
    i1 = np.array([[0, 0, 1, 2]], np.int32)
    kwargs = dict(local_negatives=local_negatives)

    def value_and_grad(fn, i2):
        ids = (i1, i2, i1, i2)
        return jax.jit(jax.value_and_grad(lambda p: fn(p, *emb[1:], *ids, **kwargs)))(emb[0])

    # Some ids shared between the views: lean == reference == definition, all finite.
    i2 = np.array([[0, 6, 6, 1]], np.int32)
    lean, ref = value_and_grad(L.detcon_b_loss, i2), value_and_grad(L.detcon_b_loss_reference, i2)
    expected = _np_detcon(*emb, i1, i2, i1, i2, temperature=0.1, **kwargs)
    np.testing.assert_allclose([float(lean[0]), float(ref[0])], expected,
                               rtol=_loss_tol((1, 4, 8), 0.1, expected))
    assert np.all(np.isfinite(lean[1]))
    assert_f32_close(lean[1], ref[1], _grad_tol((1, 4, 8)))
    # No id shared: every ROI has weight 0, so loss and gradients are exactly 0.
    i2 = np.array([[5, 6, 6, 7]], np.int32)
    lean = value_and_grad(L.detcon_b_loss, i2)
    assert float(lean[0]) == 0.0 and np.all(np.asarray(lean[1]) == 0)


def test_lean_uses_under_a_quarter_of_reference_temp_memory():
    """Deterministic compiled-memory comparison (value and grads), not a timing."""
    batch, rois, dim = 128, 16, 32
    emb = jax.ShapeDtypeStruct((batch, rois, dim), jnp.float32)
    ids = jax.ShapeDtypeStruct((batch, rois), jnp.int32)

    def temp_bytes(fn, **kwargs):
        f = jax.jit(jax.value_and_grad(lambda *a: fn(*a, **kwargs), argnums=(0, 1, 2, 3)))
        return f.lower(emb, emb, emb, emb, ids, ids, ids, ids).compile() \
            .memory_analysis().temp_size_in_bytes

    lean = temp_bytes(L.detcon_b_loss, num_chunks=8)
    ref = temp_bytes(L.detcon_b_loss_reference)
    assert lean < 0.25 * ref, (lean, ref)


def test_auto_num_chunks():
    # B=1024, R=16: one image row costs 16 * 2 * 1024 * 16 = 2**19 logits.
    assert L.auto_num_chunks(1024, 16) == 32                   # 32 images * 2**19 = 2**24
    assert L.auto_num_chunks(1024, 16, num_devices=8) == 4     # 256 images / 8 devices
    assert L.auto_num_chunks(1024, 16, max_elements=2**40) == 1
    assert L.auto_num_chunks(6, 4, max_elements=1) == 6        # nothing fits: one per chunk
    # Chunk size kept a multiple of the device count: with 2 images per device allowed,
    # 2 chunks of 12 would fit but are uneven on 8 devices, so 3 chunks of 8.
    assert L.auto_num_chunks(24, 4, num_devices=8, max_elements=2 * (4 * 2 * 24 * 4)) == 3


def test_detcon_b_errors():
    args = _random_case(0, batch=4, rois=3, dim=5, num_ids=3)
    with pytest.raises(ValueError, match="num_chunks=3 must divide batch size 4"):
        L.detcon_b_loss(*args, num_chunks=3)
    with pytest.raises(ValueError, match=r"mask ids must be \[B, R\]"):
        L.detcon_b_loss(*args[:4], args[4][:, :2], *args[5:])
    with pytest.raises(ValueError, match="must share shape"):
        L.detcon_b_loss(args[0], args[1][:, :, :4], *args[2:])


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from detcon_jax import losses as L
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(32, 4, 8)).astype(np.float32) for _ in range(4)]
    ids = [rng.integers(0, 4, size=(32, 4)).astype(np.int32) for _ in range(2)]
    args = (*emb, ids[0], ids[1], ids[0], ids[1])
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
    f = lambda fn, **kw: jax.jit(jax.value_and_grad(
        lambda p1, p2, *rest: fn(p1, p2, *rest, **kw), argnums=(0, 1)))
    loss, grads = f(L.detcon_b_loss, num_chunks=2)(*sharded)
    ref_loss, ref_grads = f(L.detcon_b_loss_reference)(*args)
    assert len(jax.devices()) == 8
    # float32 error scale (tests/tolerances.py): n = 2 B R D = 2 x 32 x 4 x 8 terms, 1 / T.
    n, eps = 2 * 32 * 4 * 8, float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(float(loss), float(ref_loss),
                               rtol=4 * eps * np.sqrt(3 * n) * 10 / abs(float(ref_loss)))
    for g, r in zip(grads, ref_grads):
        r = np.asarray(r)
        np.testing.assert_allclose(np.asarray(g), r, rtol=0,
                                   atol=4 * eps * np.sqrt(6 * n) * np.abs(r).max())
    assert grads[0].sharding.spec[0] == "data", grads[0].sharding
    print("OK")
""")


def test_lean_loss_on_batch_sharded_global_arrays(repo_root):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=repo_root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------- DetCon-S etc.


def test_detcon_s_matches_definition_and_reference():
    rng = np.random.default_rng(2)
    z1, z2 = (rng.normal(size=(3, 4, 6)).astype(np.float32) for _ in range(2))
    i1 = np.array([[0, 1, 1, 2], [3, 3, 3, 3], [0, 1, 2, 3]], np.int32)
    i2 = np.array([[1, 0, 4, 4], [3, 5, 3, 6], [7, 8, 2, 3]], np.int32)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda a, b: L.detcon_s_loss(a, b, i1, i2, temperature=0.3), argnums=(0, 1)))(z1, z2)
    expected = _np_detcon(z1, z2, z1, z2, i1, i2, i1, i2, temperature=0.3)
    np.testing.assert_allclose(float(loss), expected, rtol=_loss_tol(z1.shape, 0.3, expected))
    # Gradients flow through both the query and the key side.
    ref_grads = jax.jit(jax.grad(lambda a, b: L.detcon_b_loss_reference(
        a, b, a, b, i1, i2, i1, i2, temperature=0.3), argnums=(0, 1)))(z1, z2)
    for g, rg in zip(grads, ref_grads, strict=True):
        assert _max_rel(g, np.asarray(rg)) <= _grad_tol(z1.shape)
    one_sided = jax.jit(jax.grad(lambda a: L.detcon_b_loss_reference(
        a, z2, jax.lax.stop_gradient(a), z2, i1, i2, i1, i2, temperature=0.3)))(z1)
    assert _max_rel(grads[0], np.asarray(one_sided)) > 1e-3


def test_simclr_matches_nt_xent_formula_and_one_mask_detcon_s():
    rng = np.random.default_rng(3)
    z1, z2 = (rng.normal(size=(5, 7)).astype(np.float32) for _ in range(2))
    expected = _np_nce(z1, z2, z1, z2, temperature=0.5)
    loss = L.simclr_loss(z1, z2, temperature=0.5)
    tol = _loss_tol((5, 1, 7), 0.5, expected)
    np.testing.assert_allclose(float(loss), expected, rtol=tol)
    np.testing.assert_allclose(float(L.simclr_loss(z1[:, None], z2[:, None], temperature=0.5)),
                               expected, rtol=tol)
    zeros = np.zeros((5, 1), np.int32)
    np.testing.assert_allclose(
        float(L.detcon_s_loss(z1[:, None], z2[:, None], zeros, zeros, temperature=0.5)),
        float(loss), rtol=tol)
    with pytest.raises(ValueError, match=r"simclr_loss: expected \[B, D\] or \[B, 1, D\]"):
        L.simclr_loss(z1[:, None].repeat(2, 1), z2[:, None].repeat(2, 1))


def test_detcon_b_with_one_mask_is_nce():
    rng = np.random.default_rng(4)
    p1, p2, t1, t2 = (rng.normal(size=(6, 1, 5)).astype(np.float32) for _ in range(4))
    ids = np.full((6, 1), 9, np.int32)
    expected = _np_nce(p1[:, 0], p2[:, 0], t1[:, 0], t2[:, 0], temperature=0.1)
    for fn in (L.detcon_b_loss, L.detcon_b_loss_reference):
        np.testing.assert_allclose(float(jax.jit(fn)(p1, p2, t1, t2, ids, ids, ids, ids)),
                                   expected, rtol=_loss_tol((6, 1, 5), 0.1, expected))


def test_byol_loss_hand_case():
    p1 = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
    p2 = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    t1 = np.array([[1.0, 1.0], [0.0, -1.0]], np.float32)
    t2 = np.array([[2.0, 0.0], [-3.0, -4.0]], np.float32)
    # cos(p1, t2) = [1, -1]; cos(p2, t1) = [1/sqrt2, -1/sqrt2].
    # Per image: (2 - 2cos) + (2 - 2cos'): [0 + 2 - sqrt2, 4 + 2 + sqrt2]; mean = 4.
    # float32: 2-term norms and dot products, then sums of 4 values of size up to 8.
    tol = f32_tolerance(2, depth=4, magnitude=2.0)
    np.testing.assert_allclose(float(L.byol_loss(p1, p2, t1, t2)), 4.0, rtol=tol)
    expected = np.mean(4 - 2 * np.sum(_np_normalize(p1) * _np_normalize(t2), -1)
                       - 2 * np.sum(_np_normalize(p2) * _np_normalize(t1), -1))
    np.testing.assert_allclose(float(L.byol_loss(p1, p2, t1, t2)), expected, rtol=tol)
    np.testing.assert_allclose(
        float(L.byol_loss(p1[:, None], p2[:, None], t1[:, None], t2[:, None])), 4.0, rtol=tol)
    # Not symmetric in the pairing: pred1 goes with target2.
    assert abs(float(L.byol_loss(p1, p2, t2, t1)) - 4.0) > 0.1


def test_l2_normalize_matches_official_helper():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]], np.float32)
    out = np.asarray(L.l2_normalize(x))
    # A 2-term norm, a square root, a division: f32_tolerance(2, depth=3).
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=f32_tolerance(2, depth=3))
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    # Below sqrt(eps) = 1e-6 the norm is clamped: x / 1e-6.
    # (1e-7 and 1e-6 are not float32 numbers: two roundings of the inputs, one division.)
    np.testing.assert_allclose(out[2], [0.1, 0.0], rtol=f32_tolerance(1, depth=3))
