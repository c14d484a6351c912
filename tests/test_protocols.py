"""The dense-transfer protocols of `evaluate.segmentation --protocol`: defaults, schedule, and
evaluation at the labels' native resolution on a tiny VOC tree."""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from detcon_jax.evaluate import dense, protocols, segmentation
from tests.test_segmentation_sets import voc  # noqa: F401  (the tiny VOC tree fixture)


@pytest.mark.parametrize("name", sorted(protocols.PROTOCOLS))
def test_protocol_defaults_are_flags_of_the_cli(name):
    dests = {a.dest for a in segmentation._parser()._actions}
    assert set(protocols.protocol_defaults(name)) <= dests


def test_step_schedule_drops_tenfold_at_70_and_90_percent():
    opt = dense._sgd(1.0, 10, momentum=0.0, weight_decay=0.0, schedule="step")
    params = {"w": jnp.zeros(())}
    state, rates = opt.init(params), []
    for _ in range(10):
        updates, state = opt.update({"w": jnp.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    np.testing.assert_allclose(rates, [1.0] * 7 + [0.1] * 2 + [0.01], rtol=1e-6)
    assert isinstance(opt, optax.GradientTransformation)


@pytest.mark.slow
def test_voc_protocol_counts_every_native_label_pixel(voc, tmp_path):  # noqa: F811
    root, labels = voc
    out = tmp_path / "voc.json"
    code = segmentation.main(["--protocol=voc", "--checkpoint=random:tiny", f"--data={root}",
                              "--image_size=32", "--batch_size=2", "--steps=2",
                              "--head_channels=8", "--eval_frame=96,96", f"--output={out}"])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["protocol"], result["schedule"], result["head_dilation"],
            result["output_stride"], result["train_split"], result["test_split"]
            ) == ("voc", "step", 6, 16, "train_aug", "val")
    assert len(result["per_class_iou"]) == 21 and "aeroplane" in result["per_class_iou"]
    confusion = np.asarray(result["confusion_matrix"])
    # val = c, b at their own sizes (30x40, 36x44): ground-truth rows are their pixel counts.
    truth = np.concatenate([labels["c"].ravel(), labels["b"].ravel()])
    truth = truth[truth != 255]
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(truth, minlength=21))


def test_explicit_flags_win_over_the_protocol(voc, tmp_path, capsys):  # noqa: F811
    root, _ = voc
    parser = segmentation._parser()
    parser.set_defaults(**protocols.protocol_defaults("cityscapes"))
    args = parser.parse_args(["--checkpoint=random:tiny", f"--data={root}"])
    assert args.output_stride == 16
    assert parser.parse_args(["--checkpoint=random:tiny", f"--data={root}",
                              "--output_stride=32"]).output_stride == 32
    assert segmentation.main(["--protocol=voc", "--mode=probe", "--checkpoint=random:tiny",
                              f"--data={root}"]) == 2
    assert "--protocol=voc" in capsys.readouterr().err


@pytest.mark.slow
def test_default_frame_scores_mixed_size_labels_natively(voc, tmp_path):  # noqa: F811
    """Without a protocol: the probe on VOC's mixed image sizes, frame inferred (36 x 44)."""
    root, labels = voc
    out = tmp_path / "probe.json"
    code = segmentation.main(["--mode=probe", "--layout=voc", "--train_split=train_aug",
                              "--test_split=val", "--num_classes=21", "--void_ids=",
                              "--checkpoint=random:tiny", f"--data={root}", "--image_size=32",
                              "--batch_size=2", "--epochs=1", f"--output={out}"])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["eval_crop"], result["eval_frame"]) == ("frame", [36, 44])
    truth = np.concatenate([labels["c"].ravel(), labels["b"].ravel()])
    truth = truth[truth != 255]
    np.testing.assert_array_equal(np.asarray(result["confusion_matrix"]).sum(axis=1),
                                  np.bincount(truth, minlength=21))


def test_tfds_layout_needs_an_explicit_frame(capsys):
    assert segmentation.main(["--layout=tfds", "--tfds_name=cityscapes/semantic_segmentation",
                              "--test_split=val", "--checkpoint=random:tiny",
                              "--data=/nonexistent"]) == 2
    assert "--eval_frame" in capsys.readouterr().err


def test_backbone_at_output_stride_16_keeps_its_variables():
    from detcon_jax.evaluate import features

    backbone, _ = features.load_backbone("random:tiny")
    dilated = backbone.with_output_stride(16)
    assert dilated.variables is backbone.variables and dilated.info["output_stride"] == 16
    assert backbone.with_output_stride(32) is backbone
    images = np.zeros((1, 96, 96, 3), np.float32)
    assert backbone(images).shape == (1, 3, 3, 8) and dilated(images).shape == (1, 6, 6, 8)
    # Feature caches tell the two apart.
    assert dilated.fingerprint != backbone.fingerprint
    with pytest.raises(ValueError, match="output_stride"):
        backbone.with_output_stride(12)
