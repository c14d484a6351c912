"""Tests of detcon_jax.export: torchvision / detectron2 names and layouts, padding semantics.

The layout is checked without torchvision by an independent functional ResNet in numpy that
reads torchvision names and NCHW/OIHW arrays and pads as PyTorch does (or, with
``padding='tf_same'``, as the documented adjustment says).
"""

import ast
import json
import pickle
import pickletools
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_module
from numpy.lib.stride_tricks import sliding_window_view
from tolerances import f32_tolerance, max_rel_err
from torch_helpers import require

from detcon_jax import convert, export, interop, model

EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Independent reference: a torchvision-style ResNet forward (eval mode) in float64 numpy.


def _pads(size, kernel, stride, padding):
    if padding == "torch":  # torchvision: conv padding k//2, max-pool padding 1, symmetric
        return kernel // 2, kernel // 2
    # TF SAME, written out independently of export.tf_same_padding
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _window(x, kernel, stride, padding, value):
    (top, bottom), (left, right) = (_pads(x.shape[2], kernel, stride, padding),
                                    _pads(x.shape[3], kernel, stride, padding))
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)
    return sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]


def _conv(x, w, stride, padding):
    patches = _window(x, w.shape[-1], stride, padding, 0.0)  # N, C, oh, ow, kh, kw
    return np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _bn(x, sd, name):
    scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + EPS)
    shift = sd[f"{name}.bias"] - sd[f"{name}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def reference_forward(sd, images_nhwc, padding="torch"):
    """torchvision ResNet (v1.5: stride on conv2 of a Bottleneck, conv1 of a BasicBlock)."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)
    x = np.maximum(_bn(_conv(x, sd["conv1.weight"], 2, padding), sd, "bn1"), 0)
    x = _window(x, 3, 2, padding, -np.inf).max(axis=(-2, -1))
    for layer in range(1, 5):
        j = 0
        while f"layer{layer}.{j}.conv1.weight" in sd:
            p = f"layer{layer}.{j}."
            stride = 2 if layer > 1 and j == 0 else 1
            bottleneck = f"{p}conv3.weight" in sd
            out = x
            for k in (1, 2, 3) if bottleneck else (1, 2):
                s = stride if k == (2 if bottleneck else 1) else 1
                out = _bn(_conv(out, sd[f"{p}conv{k}.weight"], s, padding), sd, f"{p}bn{k}")
                if k < (3 if bottleneck else 2):
                    out = np.maximum(out, 0)
            shortcut = x
            if f"{p}downsample.0.weight" in sd:
                shortcut = _bn(_conv(x, sd[f"{p}downsample.0.weight"], stride, padding), sd,
                               f"{p}downsample.1")
            x = np.maximum(out + shortcut, 0)
            j += 1
    return x.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Fixtures.


def _random_variables(net, seed=0):
    """Random values (positive variances, non-trivial counters) in ``net``'s variable tree."""
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if leaf.dtype == jnp.int32:
            return np.asarray(rng.integers(1, 10_000), np.int32).reshape(leaf.shape)
        if name.endswith("['kernel']"):
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if name.endswith("['var']") or name.endswith("['scale']"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (rng.standard_normal(leaf.shape) * 0.1).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def resnet18():
    """ResNet-18 as torchvision builds it (no projection in group 0), random weights."""
    net = model.ResNet(depth=18, use_projection=(False, True, True, True))
    return net, _random_variables(net)


def _golden_tree(golden_dir):
    """The golden ResNet-50 as a released-layout Haiku tree (golden/make_haiku_checkpoint)."""
    script = load_module(golden_dir / "make_haiku_checkpoint.py")
    return script.build(json.loads((golden_dir / "resnet50_shared_spec.json").read_text()))


@pytest.fixture(scope="module")
def golden(golden_dir):
    _, variables = interop.resnet_from_haiku_tree(_golden_tree(golden_dir))
    return variables, np.load(golden_dir / "resnet50_shared_forward.npz")


_rel_err = max_rel_err

# float32 error scales of the forwards compared below (see tests/tolerances.py): the
# longest reduction is a 3x3 convolution over 512 channels (n = 4608) in both networks, and
# a feature passes through 53 (ResNet-50) or 17 (ResNet-18) convolutions, each followed by
# a BatchNorm; errors relative to the largest feature.
RESNET50_TOL = f32_tolerance(3 * 3 * 512, depth=53)
RESNET18_TOL = f32_tolerance(3 * 3 * 512, depth=17)


# ---------------------------------------------------------------------------------------------
# Names and round trips.


def test_torchvision_names_and_layout(resnet18):
    _, variables = resnet18
    sd = export.flax_to_torchvision(variables)
    # torchvision resnet18().state_dict() has 122 keys; fc.weight and fc.bias are not ours.
    assert len(sd) == 120
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(
        sd["conv1.weight"], np.transpose(params["initial_conv"]["kernel"], (3, 2, 0, 1)))
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    np.testing.assert_array_equal(sd["bn1.weight"], params["initial_batchnorm"]["scale"])
    np.testing.assert_array_equal(sd["bn1.running_var"], stats["initial_batchnorm"]["var"])
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    assert sd["bn1.num_batches_tracked"].shape == ()
    assert sd["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    np.testing.assert_array_equal(
        sd["layer3.1.bn2.bias"], params["block_group_2"]["block_1"]["batchnorm_1"]["bias"])
    np.testing.assert_array_equal(
        sd["layer4.0.downsample.0.weight"][:, :, 0, 0],
        params["block_group_3"]["block_0"]["shortcut_conv"]["kernel"][0, 0].T)
    np.testing.assert_array_equal(
        sd["layer4.0.downsample.1.running_mean"],
        stats["block_group_3"]["block_0"]["shortcut_batchnorm"]["mean"])
    assert "layer1.0.downsample.0.weight" not in sd
    assert export.torchvision_arch(variables) == "resnet18"


def test_round_trip_is_identity(resnet18):
    _, variables = resnet18
    sd = export.flax_to_torchvision(variables)
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 512)), np.zeros(1000)  # ignored
    back = export.torchvision_to_flax(sd, template=variables)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_official_torso_has_no_torchvision_twin():
    # DetCon's ResNet-18 projects in every group; torchvision's has no layer1 downsample.
    net = model.ResNet(depth=18)
    variables = _random_variables(net)
    assert "layer1.0.downsample.0.weight" in export.flax_to_torchvision(variables)
    assert export.torchvision_arch(variables) is None
    wide = model.ResNet(depth=18, width_multiplier=2, use_projection=(False, True, True, True))
    assert export.torchvision_arch(_random_variables(wide)) is None


def test_bad_keys_are_named(resnet18):
    _, variables = resnet18
    sd = export.flax_to_torchvision(variables)
    missing = dict(sd)
    del missing["layer2.1.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing key layer2\.1\.bn1\.running_var"):
        export.torchvision_to_flax(missing, template=variables)
    extra = dict(sd, **{"layer5.0.conv1.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected key layer5\.0\.conv1\.weight"):
        export.torchvision_to_flax(extra, template=variables)
    wrong = dict(sd, **{"layer1.0.conv2.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight has shape"):
        export.torchvision_to_flax(wrong, template=variables)
    bogus = {"params": {"projector": {"linear": {"kernel": np.zeros((2, 2))}}}}
    with pytest.raises(ValueError, match=r"'projector/linear' is not part of"):
        export.flax_to_torchvision(bogus)


# ---------------------------------------------------------------------------------------------
# Padding.


def test_tf_same_padding_table():
    # (size, kernel, stride) -> TF SAME (before, after)
    cases = {(224, 7, 2): (2, 3), (225, 7, 2): (3, 3), (112, 3, 2): (0, 1),
             (113, 3, 2): (1, 1), (56, 1, 2): (0, 0), (57, 1, 2): (0, 0), (56, 3, 1): (1, 1)}
    for (size, kernel, stride), want in cases.items():
        assert export.tf_same_padding(size, kernel, stride) == want


def test_odd_sizes_need_no_padding_fix(resnet18):
    """On odd sizes at every strided layer (33 px -> 17, 9, 5, 3) TF SAME == PyTorch: the
    pads are the same, so the two float64 forwards are the same arithmetic, bit for bit."""
    _, variables = resnet18
    sd = export.flax_to_torchvision(variables)
    images = np.random.default_rng(1).standard_normal((1, 33, 33, 3))
    np.testing.assert_array_equal(reference_forward(sd, images, "torch"),
                                  reference_forward(sd, images, "tf_same"))


def test_resnet18_export_matches_flax_forward(resnet18):
    """Basic blocks: numpy reference on exported names reproduces our eval-mode features.

    Tolerance RESNET18_TOL of the largest |feature|: the float32 rounding of our forward
    against a float64 reference. With PyTorch's symmetric padding the features differ at
    every position, not only at borders.
    """
    net, variables = resnet18
    images = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, images))
    sd = export.flax_to_torchvision(variables)
    assert _rel_err(ours, reference_forward(sd, images, "tf_same")) < RESNET18_TOL
    assert _rel_err(ours, reference_forward(sd, images, "torch")) > 1e-2


def test_golden_resnet50_export_reproduces_official_features(golden):
    """The official Haiku ResNet-50 features (golden, eval mode) from the torchvision export.

    64 px images: every strided layer sees an even size. With the TF SAME adjustment the
    float64 reference matches the float32 golden within RESNET50_TOL of the largest
    |feature| (its float32 rounding); with plain PyTorch padding it is off by a large
    fraction of the feature scale.
    """
    variables, forward = golden
    sd = export.flax_to_torchvision(variables)
    assert export.torchvision_arch(variables) == "resnet50"
    assert len(sd) == 318  # torchvision resnet50().state_dict() has 320 keys with fc
    want = forward["features_eval"]
    assert _rel_err(reference_forward(sd, forward["images"], "tf_same"), want) < RESNET50_TOL
    assert _rel_err(reference_forward(sd, forward["images"], "torch"), want) > 1e-2


# ---------------------------------------------------------------------------------------------
# detectron2.


def _official_d2_rename(name):
    """The renaming rules of detectron2's tools/convert-torchvision-to-d2.py, restated."""
    if "layer" not in name:
        name = "stem." + name
    for t in (1, 2, 3, 4):
        name = name.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        name = name.replace(f"bn{t}", f"conv{t}.norm")
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _pickle_protocol(data):
    """The protocol a pickle was written with (its PROTO opcode; 0 and 1 have none)."""
    op, arg, _ = next(pickletools.genops(data))
    return arg if op.name == "PROTO" else 0


def test_detectron2_payload(resnet18, tmp_path):
    _, variables = resnet18
    payload = export.to_detectron2(variables)
    assert payload["__author__"] == "detcon_jax" and payload["matching_heuristics"] is True
    sd = export.flax_to_torchvision(variables)
    expected = {_official_d2_rename(k): v for k, v in sd.items()}
    assert set(payload["model"]) == set(expected)
    for key, value in expected.items():
        assert isinstance(payload["model"][key], np.ndarray)
        np.testing.assert_array_equal(payload["model"][key], value)
    for key in ("stem.conv1.weight", "stem.conv1.norm.running_mean", "res2.0.conv1.norm.weight",
                "res5.1.conv2.weight", "res3.0.shortcut.weight", "res3.0.shortcut.norm.bias"):
        assert key in payload["model"]
    path = tmp_path / "model.pkl"
    export.save_detectron2(payload, str(path))
    assert _pickle_protocol(path.read_bytes()) == 4
    with open(path, "rb") as f:  # as DetectionCheckpointer reads .pkl files
        loaded = pickle.load(f, encoding="latin1")
    assert "model" in loaded and "__author__" in loaded
    np.testing.assert_array_equal(loaded["model"]["res4.1.conv2.weight"],
                                  payload["model"]["res4.1.conv2.weight"])
    with pytest.raises(ValueError, match=r"model\.pth: detectron2 reads this layout only"):
        export.save_detectron2(payload, str(tmp_path / "model.pth"))


# ---------------------------------------------------------------------------------------------
# torchvision itself (CI installs torch and torchvision, `.[torch]`, and sets
# DETCON_REQUIRE_TORCH=1 so that these tests cannot skip there).


def _torch():
    return require("torch"), require("torchvision")


def _nchw(images):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32)
                                                 .transpose(0, 3, 1, 2)))


def _torch_trunk(net, images):
    """Feature map (NHWC numpy) of a torchvision ResNet up to layer4 (no pool, no fc)."""
    import torch

    trunk = torch.nn.Sequential(*list(net.children())[:-2])
    with torch.no_grad():
        return trunk(_nchw(images)).numpy().transpose(0, 2, 3, 1)


def _state_dict(variables):
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in
            export.flax_to_torchvision(variables).items()}


@pytest.mark.slow
def test_torchvision_resnet50_reproduces_official_features(golden):
    """torchvision.models.resnet50 with our export + apply_tf_same_padding == golden features
    (float32 torch against the Haiku float32 golden: tolerance RESNET50_TOL); with PyTorch's
    own padding the features differ by a large fraction of their scale."""
    torch, torchvision = _torch()
    variables, forward = golden
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net.load_state_dict(_state_dict(variables), strict=True)
    net.eval()
    plain = _torch_trunk(net, forward["images"])
    padded = _torch_trunk(export.apply_tf_same_padding(net), forward["images"])
    want = forward["features_eval"]
    assert _rel_err(padded, want) < RESNET50_TOL
    assert _rel_err(plain, want) > 1e-2


@pytest.fixture(scope="module")
def official_resnet18():
    """ResNet-18 as the official torso builds it (a projection in every group, layer1 too)."""
    net = model.ResNet(depth=18)
    return net, _random_variables(net, seed=3)


def _flax_features(net, variables, images):
    return np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, images))


IMAGES_32 = np.random.default_rng(4).uniform(size=(2, 32, 32, 3)).astype(np.float32)


def test_torchvision_resnet18_reproduces_our_features(resnet18):
    """A basic-block encoder without the layer1 projection loads into the stock resnet18 and
    gives our eval-mode features (tolerance RESNET18_TOL)."""
    torch, torchvision = _torch()
    net, variables = resnet18
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(_state_dict(variables), strict=True)
    export.apply_tf_same_padding(tv).eval()
    want = _flax_features(net, variables, IMAGES_32)
    assert _rel_err(_torch_trunk(tv, IMAGES_32), want) < RESNET18_TOL


def test_torchvision_resnet18_official_torso_with_layer1_projection(official_resnet18):
    """The official torso's ResNet-18 (projection in layer1.0): a strict load into the stock
    model fails on the six layer1.0.downsample keys, a non-strict one gives wrong features;
    after add_layer1_projection a strict load reproduces ours (tolerance RESNET18_TOL)."""
    torch, torchvision = _torch()
    net, variables = official_resnet18
    assert export.needs_layer1_projection(variables)
    assert export.torchvision_arch(variables) is None
    assert export.torchvision_arch(variables, layer1_projection=True) == "resnet18"
    state = _state_dict(variables)
    want = _flax_features(net, variables, IMAGES_32)

    stock = torchvision.models.resnet18()
    stock.fc = torch.nn.Identity()
    with pytest.raises(RuntimeError) as error:
        stock.load_state_dict(state, strict=True)
    unexpected = sorted(re.findall(r'"(layer1\.0\.downsample\.[^"]+)"', str(error.value)))
    assert unexpected == sorted(k for k in state if k.startswith("layer1.0.downsample."))
    assert len(unexpected) == 6
    stock.load_state_dict(state, strict=False)
    export.apply_tf_same_padding(stock).eval()
    assert _rel_err(_torch_trunk(stock, IMAGES_32), want) > 0.1

    patched = export.add_layer1_projection(torchvision.models.resnet18())
    patched.fc = torch.nn.Identity()
    patched.load_state_dict(state, strict=True)
    export.apply_tf_same_padding(patched).eval()
    assert _rel_err(_torch_trunk(patched, IMAGES_32), want) < RESNET18_TOL
    # A bottleneck ResNet already has the shortcut: nothing changes.
    resnet50 = torchvision.models.resnet50()
    before = resnet50.layer1[0].downsample
    assert export.add_layer1_projection(resnet50).layer1[0].downsample is before


def _documented_snippet(repo_root):
    """The torchvision code block of docs/detectron2.md that follows its test marker."""
    text = (repo_root / "docs" / "detectron2.md").read_text()
    marker = text.index("<!-- torchvision-snippet:")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)
    return textwrap.dedent(block)


def test_documented_torchvision_snippet_runs_as_written(golden_dir, golden, repo_root,
                                                        tmp_path, monkeypatch):
    """README's `convert to-torchvision ... --output=detcon_r50.pth`, then the docs' snippet
    exactly as written (and its .npz line): `net` is in eval mode and gives the official
    pooled features of the golden images (tolerance RESNET50_TOL); the BatchNorm statistics
    are the exported ones after a forward."""
    torch, _ = _torch()
    _, forward = golden
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "released.npy", _golden_tree(golden_dir), allow_pickle=True)
    assert convert.main(["to-torchvision", "--input=released.npy",
                         "--output=detcon_r50.pth"]) == 0
    snippet = _documented_snippet(repo_root)
    npz_line = re.search(r"# From an \.npz instead: (state = .*)", snippet).group(1)
    np.savez("detcon_r50.npz", **export.flax_to_torchvision(golden[0]))
    want = forward["features_eval"].mean(axis=(1, 2))
    for code in (snippet, snippet.replace("state = torch.load('detcon_r50.pth')",
                                          npz_line.replace("path", "'detcon_r50.npz'"))):
        namespace = {}
        exec(compile(code, "docs/detectron2.md", "exec"), namespace)  # noqa: S102
        net = namespace["net"]
        assert not net.training and not any(m.training for m in net.modules())
        with torch.no_grad():
            got = net(_nchw(forward["images"])).numpy()
        assert got.shape == want.shape
        assert _rel_err(got, want) < RESNET50_TOL
        running = net.bn1.running_mean.numpy()
        np.testing.assert_array_equal(running, namespace["state"]["bn1.running_mean"].numpy())


def test_torch_resnet_helpers_import_only_torch(repo_root):
    """detcon_jax/torch_resnet.py is meant to be copied alone into a PyTorch environment."""
    tree = ast.parse((repo_root / "detcon_jax" / "torch_resnet.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module)
    assert modules <= {"__future__", "typing", "torch", "torch.nn.functional"}, modules
