"""Tests of detcon_jax.model against Haiku references built here (the official code's blocks)."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_f32_close, f32_tolerance

from detcon_jax import interop, model

BN = {"decay_rate": 0.9, "eps": 1e-5, "create_scale": True, "create_offset": True}
# Parity tolerance: largest |flax - haiku| <= TOL * largest |haiku|, the float32 rounding
# of two summation orders (tests/tolerances.py) of the parity networks: their longest sums
# are a BatchNorm's over 2 x 48 x 48 positions and a 3 x 3 x 512 convolution (n = 4608), and
# a feature passes 21 layers (17 convolutions and 4 shortcuts of a ResNet-18, each with a
# BatchNorm).
TOL = f32_tolerance(4608, depth=21)
# The tiny DetCon network of `detcon_case` (96 px, batch 2, 8 channels): the longest sum is
# the stem BatchNorm's over 2 x 48 x 48 = 4608 positions; encoder (9 convolutions and 4
# shortcuts), projector and predictor (2 layers each) make 17 layers; gradients go back
# through them again (34).
TINY_TOL = f32_tolerance(4608, depth=17)
TINY_GRAD_TOL = f32_tolerance(4608, depth=34)


class HaikuTorso(hk.Module):
    """The official ``networks.ResNetTorso`` (v1, final_mean_pool=False) from Haiku blocks."""

    def __init__(self, blocks, channels, bottleneck, projection, width, name):
        super().__init__(name=name)
        self.initial_conv = hk.Conv2D(64 * width, 7, stride=2, with_bias=False,
                                      padding="SAME", name="initial_conv")
        self.initial_batchnorm = hk.BatchNorm(name="initial_batchnorm", **BN)
        self.groups = [
            hk.nets.ResNet.BlockGroup(channels=c * width, num_blocks=n, stride=s, bn_config=BN,
                                      resnet_v2=False, bottleneck=bottleneck,
                                      use_projection=p, name=f"block_group_{i}")
            for i, (n, c, s, p) in enumerate(zip(blocks, channels, (1, 2, 2, 2), projection,
                                                 strict=True))]

    def __call__(self, x, is_training):
        x = jax.nn.relu(self.initial_batchnorm(self.initial_conv(x), is_training))
        x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        for group in self.groups:
            x = group(x, is_training, False)
        return x


class HaikuMLP(hk.Module):
    """The official ``networks.MLP``."""

    def __init__(self, hidden, output, name):
        super().__init__(name=name)
        self.hidden, self.output = hidden, output

    def __call__(self, x, is_training):
        x = hk.Linear(self.hidden, with_bias=True)(x)
        x = jax.nn.relu(hk.BatchNorm(**BN)(x, is_training=is_training))
        return hk.Linear(self.output, with_bias=False)(x)


def _randomise(params, seed):
    """Random non-degenerate values (the zero-initialised BN scales would hide branches)."""
    rng = np.random.default_rng(seed)
    out = {}
    for module, leaves in params.items():
        out[module] = {}
        for name, value in leaves.items():
            if name == "w":
                fan_in = int(np.prod(value.shape[:-1]))
                new = rng.standard_normal(value.shape) * np.sqrt(2.0 / fan_in)
            elif name == "scale":
                new = rng.uniform(0.5, 1.5, value.shape)
            else:
                new = rng.standard_normal(value.shape) * 0.1
            out[module][name] = jnp.asarray(new, jnp.float32)
    return out


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def _shapes(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name), tree)


# name -> (flax ResNet kwargs, haiku torso args, image size)
PARITY_CASES = {
    # Official ResNet-18: basic blocks, projection also on group 0's first block.
    "resnet18": ({"depth": 18}, ((2, 2, 2, 2), (64, 128, 256, 512), False, (True,) * 4, 1), 96),
    # Bottleneck blocks (ResNet-50 topology per block, fewer blocks), width multiplier 2.
    "bottleneck_w2": ({"depth": 50, "width_multiplier": 2, "blocks_per_group": (2, 1, 1, 1),
                       "channels_per_group": (32, 64, 64, 128)},
                      ((2, 1, 1, 1), (32, 64, 64, 128), True, (True,) * 4, 2), 96),
}


def _haiku_variables(hk_net, x, seed):
    """Haiku params (randomised) and a fresh state, without running Haiku's (slow) init."""
    params, state = jax.eval_shape(lambda x: hk_net.init(jax.random.key(0), x, True), x)
    state = {m: {k: jnp.zeros(v.shape, v.dtype) for k, v in leaves.items()}
             for m, leaves in state.items()}
    return _randomise(params, seed), state


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_resnet_matches_haiku_train_and_eval(case):
    """Same weights -> same features; the EMA updates and eval-mode stats match Haiku's."""
    flax_kwargs, hk_args, size = PARITY_CASES[case]
    hk_net = hk.transform_with_state(lambda x, t: HaikuTorso(*hk_args, name="res_net")(x, t))
    images = jax.random.uniform(jax.random.key(1), (3, 2, size, size, 3))
    hk_params, hk_state = _haiku_variables(hk_net, images[0], seed=3)

    net = model.ResNet(**flax_kwargs)
    flax_shapes = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=True), images[0])
    variables = interop.haiku_to_flax(hk_params, hk_state)
    # Names mirror Haiku one-to-one: the converted tree is exactly the Flax tree.
    assert _shapes(variables) == _shapes(flax_shapes)

    hk_train = jax.jit(lambda p, s, x: hk_net.apply(p, s, None, x, True))
    hk_eval = jax.jit(lambda p, s, x: hk_net.apply(p, s, None, x, False)[0])
    fl_train = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))
    fl_eval = jax.jit(lambda v, x: net.apply(v, x, train=False))

    stats = variables["batch_stats"]
    for step in range(2):  # two different batches: the debiased EMA is non-trivial
        hk_out, hk_state = hk_train(hk_params, hk_state, images[step])
        fl_out, updates = fl_train({"params": variables["params"], "batch_stats": stats},
                                   images[step])
        stats = updates["batch_stats"]
        assert fl_out.shape == hk_out.shape
        assert _rel_err(fl_out, hk_out) <= TOL, (case, step)
    expected_stats = interop.haiku_to_flax(hk_params, hk_state)["batch_stats"]
    for path, value in jax.tree_util.tree_leaves_with_path(expected_stats):
        got = functools.reduce(lambda t, k: t[k.key], path, stats)
        if value.dtype == np.int32:
            assert int(got) == int(value) == 2, path
        else:
            # Batch statistics: sums over the batch of the features (TOL).
            assert_f32_close(got, value, TOL, err_msg=str(path))
    hk_ev = hk_eval(hk_params, hk_state, images[2])
    fl_ev = fl_eval({"params": variables["params"], "batch_stats": stats}, images[2])
    assert _rel_err(fl_ev, hk_ev) <= TOL, case


def test_conv_init_is_haikus_truncated_normal():
    """Haiku's default: N(0, 1) truncated to [-2, 2], times 1/sqrt(fan_in), not rescaled."""
    shape = (3, 3, 256, 256)
    fan_in = 3 * 3 * 256
    w = np.asarray(model.haiku_default_init(jax.random.key(0), shape))
    # One float32 multiplication (by a rounded 1/sqrt(fan_in)) apart: 2 eps.
    np.testing.assert_allclose(
        w, np.asarray(jax.random.truncated_normal(jax.random.key(0), -2.0, 2.0, shape))
        / np.sqrt(fan_in), rtol=2 * EPS32)
    assert w.dtype == np.float32
    assert np.abs(w).max() <= 2.0 / np.sqrt(fan_in) + 1e-7
    # Std of N(0,1) truncated to [-2, 2] is 0.8796 (Flax's variance_scaling would give 1).
    assert abs(w.std() * np.sqrt(fan_in) / 0.8796 - 1) < 0.01
    # Same law as Haiku's own Conv2D initialiser.
    conv = hk.transform(lambda x: hk.Conv2D(256, 3, with_bias=False)(x))
    w_hk = np.asarray(conv.init(jax.random.key(1), jnp.zeros((1, 4, 4, 256)))["conv2_d"]["w"])
    assert abs(w.std() / w_hk.std() - 1) < 0.01
    # The model's convolutions use it.
    block = model.BlockV1(channels=32, stride=1, use_projection=True, bottleneck=True)
    params = jax.jit(lambda x: block.init(jax.random.key(2), x, train=False))(
        jnp.zeros((1, 4, 4, 16)))["params"]
    k = np.asarray(params["conv_1"]["kernel"])
    assert np.abs(k).max() <= 2.0 / np.sqrt(9 * 8) + 1e-7


@pytest.mark.parametrize("bottleneck", [True, False])
def test_last_batchnorm_scale_zero_only_in_bottleneck_blocks(bottleneck):
    """Haiku's BlockV1: scale 0 on batchnorm_2 of a bottleneck block; basic blocks all 1."""
    block = model.BlockV1(channels=32, stride=2, use_projection=True, bottleneck=bottleneck)
    params = jax.jit(lambda x: block.init(jax.random.key(0), x, train=False))(
        jnp.zeros((1, 4, 4, 16)))["params"]
    last = "batchnorm_2" if bottleneck else "batchnorm_1"
    np.testing.assert_array_equal(params[last]["scale"], 0.0 if bottleneck else 1.0)
    for name in ("batchnorm_0", "shortcut_batchnorm", *(["batchnorm_1"] * bottleneck)):
        np.testing.assert_array_equal(params[name]["scale"], 1.0)
    for name, leaves in params.items():
        if "bias" in leaves:
            np.testing.assert_array_equal(leaves["bias"], 0.0, err_msg=name)
    assert ("batchnorm_2" in params) == bottleneck
    assert params["conv_1"]["kernel"].shape[:2] == (3, 3)  # the strided conv is the 3x3 one


@pytest.mark.parametrize("depth,width,channels,num_params", [
    (18, 1, 512, 11_180_736),    # torchvision's 11,176,512 + official group-0 projection
    (34, 1, 512, None),
    (50, 1, 2048, 23_508_032),   # torchvision ResNet-50 without fc
    (50, 2, 4096, None),
    (101, 1, 2048, None),
    (152, 1, 2048, None),
    (200, 1, 2048, None),
])
def test_resnet_shapes_all_depths(depth, width, channels, num_params):
    net = model.ResNet(depth=depth, width_multiplier=width)
    x = jax.ShapeDtypeStruct((2, 224, 200, 3), jnp.float32)
    variables = jax.eval_shape(lambda r, x: net.init(r, x, train=False), jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 7, 7, channels)  # ceil(200 / 32) == 7
    blocks, bottleneck = model.RESNET_DEPTHS[depth]
    for i, n in enumerate(blocks):
        assert len(variables["params"][f"block_group_{i}"]) == n
        assert ("conv_2" in variables["params"][f"block_group_{i}"]["block_0"]) == bottleneck
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    if num_params is not None:
        assert count == num_params


def test_bf16_compute_keeps_float32_params():
    net = model.ResNet(dtype=jnp.bfloat16, **model.TINY_RESNET)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda r, x: net.init(r, x, train=True), jax.random.key(0), x)
    leaves = jax.tree.leaves(variables["params"])
    assert leaves and all(v.dtype == jnp.float32 for v in leaves)
    stats = jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
    assert all(v.dtype == (jnp.int32 if p[-1].key == "counter" else jnp.float32)
               for p, v in stats)
    out, updates = jax.eval_shape(
        lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 1, 1, 8)
    assert _shapes(updates["batch_stats"]) == _shapes(variables["batch_stats"])


def test_resnet_rejects_bad_config():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="depth 42"):
        model.ResNet(depth=42).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="width_multiplier"):
        model.ResNet(depth=18, width_multiplier=1.5).init(jax.random.key(0), x, train=False)


def test_mlp_matches_haiku_and_normalises_over_batch_and_rois():
    b, r, d, hidden, out = 4, 3, 16, 32, 8
    hk_mlp = hk.transform_with_state(lambda x, t: HaikuMLP(hidden, out, name="projector")(x, t))
    x = jax.random.normal(jax.random.key(0), (2, b, r, d))
    hk_params, hk_state = _haiku_variables(hk_mlp, x[0], seed=5)
    mlp = model.MLP(hidden_size=hidden, output_size=out)
    variables = interop.haiku_to_flax(hk_params, hk_state)
    flax_init = jax.eval_shape(lambda x: mlp.init(jax.random.key(0), x, train=True), x[0])
    assert _shapes(variables) == _shapes(flax_init)
    assert flax_init["params"]["batch_norm"]["scale"].shape == (hidden,)
    assert "bias" not in flax_init["params"]["linear_1"]

    hk_out, hk_state = hk_mlp.apply(hk_params, hk_state, None, x[0], True)
    fl_out, upd = mlp.apply(variables, x[0], train=True, mutable=["batch_stats"])
    assert fl_out.shape == (b, r, out)
    assert _rel_err(fl_out, hk_out) <= TOL
    hk_ev, _ = hk_mlp.apply(hk_params, hk_state, None, x[1], False)
    fl_ev = mlp.apply({"params": variables["params"], **upd}, x[1], train=False)
    assert _rel_err(fl_ev, hk_ev) <= TOL
    # Statistics over B and R: the first step's average is the mean over both axes.
    hidden_act = x[0] @ variables["params"]["linear"]["kernel"] + \
        variables["params"]["linear"]["bias"]
    # A mean over B x R = 12 rows of a 16-term product sum: f32_tolerance(16 * 12).
    assert_f32_close(upd["batch_stats"]["batch_norm"]["mean"], hidden_act.mean(axis=(0, 1)),
                     f32_tolerance(16 * 12))


def _tiny_detcon(**kwargs):
    return model.DetConNetwork(depth=18, mlp_hidden_size=16, projection_size=8,
                               encoder_blocks_per_group=(1, 1, 1, 1),
                               encoder_channels_per_group=(8, 8, 8, 8), **kwargs)


@pytest.fixture(scope="module")
def detcon_case():
    b, r, size = 2, 3, 96
    images = jax.random.uniform(jax.random.key(0), (b, size, size, 3))
    masks = (jax.random.uniform(jax.random.key(1), (b, r, 9)) > 0.5).astype(jnp.float32)
    net = _tiny_detcon(num_classes=5)
    # Random values in the shapes of init (cheaper than compiling the initialisers).
    shapes = jax.eval_shape(lambda x, m: net.init(jax.random.key(2), x, m, train=True),
                            images, masks)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda v: jnp.asarray(rng.standard_normal(v.shape) * 0.3, v.dtype)
        if v.dtype == jnp.float32 else jnp.zeros(v.shape, v.dtype), shapes)
    return net, variables, images, masks


def test_detcon_network_outputs_and_normalisation(detcon_case):
    net, variables, images, masks = detcon_case
    b, r = masks.shape[:2]
    assert set(variables["params"]) == {"encoder", "projector", "predictor", "classifier"}
    out, _ = jax.jit(lambda v: net.apply(v, images, masks, train=True,
                                         mutable=["batch_stats"]))(variables)
    assert set(out) == {"projection", "prediction", "embedding", "logits"}
    assert out["projection"].shape == out["prediction"].shape == (b, r, 8)
    assert out["embedding"].shape == (b, 8) and out["logits"].shape == (b, 5)
    assert all(v.dtype == jnp.float32 for v in out.values())

    # The encoder sees ImageNet-normalised images; the projector sees masked averages.
    encoder = model.ResNet(depth=18, blocks_per_group=(1, 1, 1, 1),
                           channels_per_group=(8, 8, 8, 8))
    normed = (images - jnp.array(model.IMAGENET_MEAN)) / jnp.array(model.IMAGENET_STD)
    feats, _ = jax.jit(lambda v, x: encoder.apply(v, x, train=True, mutable=["batch_stats"]))(
        {"params": variables["params"]["encoder"],
         "batch_stats": variables["batch_stats"]["encoder"]}, normed)
    # The same encoder in another program: its rounding (TINY_TOL), plus the 9-cell mean.
    assert_f32_close(out["embedding"], feats.mean(axis=(1, 2)), TINY_TOL)
    flat = feats.reshape(b, 9, -1)
    pooled = jnp.einsum("brp,bpc->brc", masks, flat) / jnp.maximum(
        masks.sum(-1, keepdims=True), 1.0)
    proj, _ = model.MLP(16, 8).apply({"params": variables["params"]["projector"],
                                      "batch_stats": variables["batch_stats"]["projector"]},
                                     pooled, train=True, mutable=["batch_stats"])
    assert_f32_close(out["projection"], proj, TINY_TOL)
    assert model.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert model.IMAGENET_STD == (0.229, 0.224, 0.225)


def test_detcon_network_optional_heads():
    """No predictor / classifier when disabled; no heads without masks; bad masks named."""
    plain = _tiny_detcon(use_predictor=False)
    images = jax.ShapeDtypeStruct((2, 96, 96, 3), jnp.float32)
    masks = jax.ShapeDtypeStruct((2, 3, 9), jnp.float32)
    variables = jax.eval_shape(lambda x, m: plain.init(jax.random.key(0), x, m, train=False),
                               images, masks)
    assert set(variables["params"]) == {"encoder", "projector"}
    out = jax.eval_shape(lambda v, x, m: plain.apply(v, x, m, train=False),
                         variables, images, masks)
    assert set(out) == {"projection", "embedding"}
    out = jax.eval_shape(lambda v, x: plain.apply(v, x, None, train=False), variables, images)
    assert set(out) == {"embedding"}
    with pytest.raises(ValueError, match="masks"):
        jax.eval_shape(lambda v, x, m: plain.apply(v, x, m, train=False), variables, images,
                       jax.ShapeDtypeStruct((2, 3, 4), jnp.float32))


def test_logits_do_not_train_the_encoder(detcon_case):
    net, variables, images, masks = detcon_case

    def loss(params, key):
        out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                           masks, train=True, mutable=["batch_stats"])
        return jnp.sum(out[key] ** 2)

    grads = jax.jit(lambda p: (jax.grad(loss)(p, "logits"), jax.grad(loss)(p, "projection")))
    g_logits, g_proj = grads(variables["params"])
    assert all(np.all(g == 0) for g in jax.tree.leaves(g_logits["encoder"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(g_logits["classifier"]))
    # ...while the representation loss does reach the encoder (this test can fail).
    assert any(np.any(g != 0) for g in jax.tree.leaves(g_proj["encoder"]))


def test_init_state_holds_init_batch_statistics():
    """As Haiku: init (train mode) stores the batch statistics, counter 0; step 1 replaces them."""
    bn = model.BatchNorm()
    x = jax.random.normal(jax.random.key(0), (4, 3, 5)) + 2.0
    variables = bn.init(jax.random.key(1), x, train=True)
    stats = variables["batch_stats"]
    # Means over 4 x 3 = 12 values: f32_tolerance(12). The variance is E[x^2] - E[x]^2 (as
    # Haiku's), so its rounding is at the scale of E[x^2], not of the variance.
    assert_f32_close(stats["mean"], x.mean(axis=(0, 1)), f32_tolerance(12))
    square_scale = float(np.max(np.mean(np.square(x), axis=(0, 1))) / np.max(x.var(axis=(0, 1))))
    assert_f32_close(stats["var"], x.var(axis=(0, 1)),
                     f32_tolerance(12, depth=2, magnitude=square_scale))
    assert int(stats["counter"]) == 0
    y = x * 3.0
    _, upd = bn.apply(variables, y, train=True, mutable=["batch_stats"])
    assert_f32_close(upd["batch_stats"]["mean"], y.mean(axis=(0, 1)), f32_tolerance(12))
    assert int(upd["batch_stats"]["counter"]) == 1
    # Second step: Haiku's debiased EMA, (0.9 * 0.1 * m1 + 0.1 * m2) / (1 - 0.9 ** 2).
    _, upd2 = bn.apply({**variables, **upd}, x, train=True, mutable=["batch_stats"])
    m1, m2 = y.mean(axis=(0, 1)), x.mean(axis=(0, 1))
    assert_f32_close(upd2["batch_stats"]["mean"], (0.09 * m1 + 0.1 * m2) / (1 - 0.81),
                     f32_tolerance(12, depth=3))
    zeros = bn.init(jax.random.key(1), x, train=False)["batch_stats"]
    assert all(np.all(v == 0) for v in jax.tree.leaves(zeros))


@pytest.mark.slow
def test_interleaved_views_equal_consecutive_single_view_calls(detcon_case):
    """``num_views=2`` on an interleaved batch == the official two consecutive calls: outputs,
    chained moving averages (from a non-zero counter), counters and gradients, to the
    float32 rounding of two summation orders (TINY_TOL, TINY_GRAD_TOL)."""
    net, variables, images, masks = detcon_case
    images2 = jax.random.uniform(jax.random.key(7), images.shape) ** 2  # other statistics
    masks2 = masks[:, ::-1]
    stats = jax.tree.map(lambda v: jnp.full_like(v, 3) if v.dtype == jnp.int32 else v,
                         variables["batch_stats"])
    paired = net.clone(num_views=2)

    def consecutive(params):
        o1, s = net.apply({"params": params, "batch_stats": stats}, images, masks, train=True,
                          mutable=["batch_stats"])
        o2, s = net.apply({"params": params, **s}, images2, masks2, train=True,
                          mutable=["batch_stats"])
        return (o1, o2), s["batch_stats"]

    def interleaved(params):
        out, s = paired.apply({"params": params, "batch_stats": stats},
                              model.interleave_views(images, images2),
                              model.interleave_views(masks, masks2), train=True,
                              mutable=["batch_stats"])
        return model.split_views(out, 2), s["batch_stats"]

    def loss(forward, params):
        (o1, o2), _ = forward(params)
        return jnp.sum(o1["prediction"] * o2["projection"]) + jnp.sum(o2["embedding"] ** 2)

    run = jax.jit(lambda p: (consecutive(p), interleaved(p),
                             jax.grad(functools.partial(loss, consecutive))(p),
                             jax.grad(functools.partial(loss, interleaved))(p)))
    (ref_out, ref_stats), (out, new_stats), ref_grad, grad = run(variables["params"])
    for ref_view, view in zip(ref_out, out, strict=True):
        assert set(view) == set(ref_view)
        for key in ref_view:
            assert _rel_err(view[key], ref_view[key]) <= TINY_TOL, key
    for (path, ref), leaf in zip(jax.tree_util.tree_leaves_with_path(ref_stats),
                                 jax.tree.leaves(new_stats), strict=True):
        if ref.dtype == jnp.int32:
            assert np.all(np.asarray(leaf) == 5), path  # two updates from counter 3
        else:
            assert _rel_err(leaf, ref) <= TINY_TOL, path
    # The chain really moved the averages (otherwise the comparison above proves little).
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), stats, ref_stats)
    assert min(v for v in jax.tree.leaves(moved) if v != 2.0) > 1e-4
    # Gradients to TINY_GRAD_TOL of the largest entry (the float32 rounding of two summation
    # orders through the network and back). Relative to the largest entry since some leaves
    # are zero up to rounding (biases in front of a BatchNorm, the classifier this loss does
    # not reach).
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grad))
    for (path, ref), leaf in zip(jax.tree_util.tree_leaves_with_path(ref_grad),
                                 jax.tree.leaves(grad), strict=True):
        assert np.abs(np.asarray(leaf) - np.asarray(ref)).max() <= TINY_GRAD_TOL * scale, path
    # Evaluation mode ignores num_views; the parameters do not depend on it.
    ev = {"params": variables["params"], "batch_stats": stats}
    np.testing.assert_array_equal(paired.apply(ev, images, masks, train=False)["projection"],
                                  net.apply(ev, images, masks, train=False)["projection"])
    assert _shapes(jax.eval_shape(lambda x, m: paired.init(jax.random.key(0), x, m, train=True),
                                  model.interleave_views(images, images2),
                                  model.interleave_views(masks, masks2))) == _shapes(variables)


def test_interleave_and_split_views_round_trip():
    a, b = jnp.arange(6).reshape(3, 2), 10 + jnp.arange(6).reshape(3, 2)
    both = model.interleave_views(a, b)
    np.testing.assert_array_equal(both[:, 0], [0, 10, 2, 12, 4, 14])
    np.testing.assert_array_equal(model.split_views(both, 2)[0], a)
    np.testing.assert_array_equal(model.split_views(both, 2)[1], b)
    with pytest.raises(ValueError, match="num_views=2"):
        model.BatchNorm(num_views=2).init(jax.random.key(0), jnp.ones((3, 4)), train=True)


# ---------------------------------------------------------------------------------------------
# Output stride 16 / 8 (dilated last groups) for the dense-transfer protocols.


def _random_resnet_variables(net, x, seed):
    """Variables of ``net`` with random non-degenerate parameters and the init batch's
    statistics (so that the eval-mode BatchNorms are not identities)."""
    variables = net.init(jax.random.key(seed), x, train=True)
    rng = np.random.default_rng(seed)

    def randomise(path, value):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(value.shape[:-1]))
            return jnp.asarray(rng.standard_normal(value.shape) * np.sqrt(2.0 / fan_in),
                               jnp.float32)
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, value.shape), jnp.float32)
        return jnp.asarray(rng.standard_normal(value.shape) * 0.1, jnp.float32)

    params = jax.tree_util.tree_map_with_path(randomise, variables["params"])
    return {"params": params, "batch_stats": variables["batch_stats"]}


def _reference_block(x, params, stats, dilation):
    """A ResNet v1 block in eval mode, by hand: every 3x3 convolution at stride 1 with
    ``rhs_dilation`` and its SAME padding (``dilation`` on each side) written out."""

    def conv(x, kernel):
        k = kernel.shape[0]
        rate = dilation if k == 3 else 1
        pad = rate * (k - 1) // 2
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
            rhs_dilation=(rate, rate), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST)

    def bn(x, name):
        scale = params[name]["scale"] / jnp.sqrt(stats[name]["var"] + 1e-5)
        return (x - stats[name]["mean"]) * scale + params[name]["bias"]

    shortcut = x
    if "shortcut_conv" in params:
        shortcut = bn(conv(x, params["shortcut_conv"]["kernel"]), "shortcut_batchnorm")
    out, n = x, sum(1 for name in params if name.startswith("conv_"))
    for i in range(n):
        out = bn(conv(out, params[f"conv_{i}"]["kernel"]), f"batchnorm_{i}")
        if i < n - 1:
            out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


@pytest.mark.parametrize("bottleneck", [False, True])
def test_output_stride_16_dilates_the_last_group(bottleneck):
    """Stride-16 net = the stride-32 net's first three groups, then the last group computed
    by hand with dilation-2, stride-1 3x3 convolutions; same variables, unchanged tree."""
    kwargs = {**model.TINY_RESNET, "bottleneck": bottleneck}
    plain = model.ResNet(depth=18, **kwargs)
    dilated = model.ResNet(depth=18, output_stride=16, **kwargs)
    x = jax.random.normal(jax.random.key(1), (2, 96, 96, 3))
    variables = _random_resnet_variables(plain, x, seed=3)
    # The parameter tree does not depend on the stride: stride-32 weights load unchanged.
    assert _shapes(jax.eval_shape(lambda: dilated.init(jax.random.key(0), x, train=True))
                   ) == _shapes(variables)

    got = dilated.apply(variables, x, train=False)
    assert got.shape == (2, 96 // 16, 96 // 16, 8)
    assert plain.apply(variables, x, train=False).shape == (2, 3, 3, 8)
    _, inter = plain.apply(variables, x, train=False,
                           capture_intermediates=lambda m, _: m.name == "block_group_2")
    want = inter["intermediates"]["block_group_2"]["__call__"][0]
    assert want.shape == (2, 6, 6, 8)
    group = "block_group_3"
    for i in range(kwargs["blocks_per_group"][3]):
        want = _reference_block(want, variables["params"][group][f"block_{i}"],
                                variables["batch_stats"][group][f"block_{i}"], dilation=2)
    # Sums of 3 x 3 x 8 = 72 terms; 3 chained convolutions (2 + shortcut) and the stem's
    # 7 x 7 x 3 convolution upstream are shared by both sides.
    assert_f32_close(got, want, f32_tolerance(72, depth=3))


def test_output_stride_8_and_validation():
    net = model.ResNet(depth=18, output_stride=8, **model.TINY_RESNET)
    assert net.group_strides() == ((1, 1), (2, 1), (1, 2), (1, 4))
    assert model.ResNet(output_stride=16).group_strides() == ((1, 1), (2, 1), (2, 1), (1, 2))
    assert model.ResNet().group_strides() == ((1, 1), (2, 1), (2, 1), (2, 1))
    x = jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32)
    out = jax.eval_shape(lambda x: net.init_with_output(jax.random.key(0), x, train=False)[0],
                         x)
    assert out.shape == (1, 12, 12, 8)
    with pytest.raises(ValueError, match="output_stride"):
        model.ResNet(output_stride=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                           train=False)
