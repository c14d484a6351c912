"""The mask-agreement measure (mean best-overlap IoU with the ground truth) and its CLI."""

import json

import numpy as np
import pytest
from data_helpers import write_folder

from detcon_jax import mask_agreement


def _reference(predicted, labels, void_ids):
    """The definition, pixel set by pixel set in float64."""
    valid = ~np.isin(labels, void_ids)
    out = []
    for g in sorted(set(labels[valid].tolist())):
        gt = (labels == g) & valid
        best = 0.0
        for p in set(predicted[valid].tolist()):
            seg = (predicted == p) & valid
            best = max(best, np.float64((gt & seg).sum()) / np.float64((gt | seg).sum()))
        out.append(best)
    return np.array(out, np.float64)


def test_best_overlap_matches_the_definition_on_random_maps():
    rs = np.random.RandomState(0)
    for _ in range(5):
        labels = rs.randint(0, 13, size=(17, 23))
        # Predicted segments that are blocky and partly follow the labels.
        predicted = np.where(rs.rand(17, 23) < 0.6, labels * 3 % 7,
                             np.repeat(np.repeat(rs.randint(0, 5, (6, 8)), 3, 0), 3, 1)[:17, :23])
        got = mask_agreement.best_overlap_ious(predicted, labels, void_ids=(11, 12))
        np.testing.assert_allclose(got, _reference(predicted, labels, (11, 12)), rtol=1e-15)


def test_best_overlap_on_a_hand_built_image():
    labels = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [11, 11, 11, 11],
                       [2, 2, 2, 2]])
    predicted = np.array([[5, 5, 5, 7],
                          [5, 5, 5, 7],
                          [5, 7, 7, 7],   # void row: left out of every segment
                          [9, 9, 9, 9]])
    got = mask_agreement.best_overlap_ious(predicted, labels)
    # Labelled pixels only: {5} is 6 of them, {7} 2. Label 0 (4 px): {5} 4 / 6. Label 1
    # (4 px): {7} 2 / 4 beats {5} 2 / 8. Label 2: {9} exactly.
    np.testing.assert_allclose(got, [4 / 6, 0.5, 1.0])
    # Ids are names only: a relabelled prediction scores the same; the labels themselves 1.
    np.testing.assert_allclose(mask_agreement.best_overlap_ious(predicted + 100, labels), got)
    np.testing.assert_allclose(mask_agreement.best_overlap_ious(labels, labels), [1, 1, 1])
    assert mask_agreement.best_overlap_ious(predicted, np.full((4, 4), 11)).size == 0


def test_summarize_pools_segments_and_averages_images():
    result = mask_agreement.summarize([np.array([1.0, 0.5, 0.0]), np.array([1.0]), np.zeros([0])])
    assert result["mean"] == pytest.approx(2.5 / 4)
    assert result["image_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert (result["num_segments"], result["num_images"]) == (4, 3)


def test_cli_fh_and_grid_on_a_folder(tmp_path, capsys):
    data = tmp_path / "split"
    data.mkdir()
    _, ids = write_folder(data, n=2, corrupt=False)
    out = tmp_path / "agreement.json"
    results = mask_agreement.main([
        "--config=experiments/detcon_b_camvid.py:fh", f"--data_dir={data}",
        "--sources=fh,grid", "--void_ids=255", f"--output={out}"])
    assert set(results) == {"fh", "grid"}
    segments = sum(np.unique(i).size for i in ids)
    for r in results.values():
        assert r["num_segments"] == segments and r["num_images"] == 2
        assert 0.0 < r["mean"] <= 1.0
    assert json.loads(out.read_text())["sources"]["grid"]["mean"] == results["grid"]["mean"]
    assert "grid: mean best-overlap IoU" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--sources=learned"], "--sources=learned needs a config with masks.source='learned'"),
    (["--sources=fh,nope"], "--sources must be a subset of"),
    (["--max_images=0"], "--max_images must be >= 1"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    (tmp_path / "labels").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        mask_agreement.main(["--config=experiments/detcon_b_camvid.py:fh",
                             f"--data_dir={tmp_path}", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
