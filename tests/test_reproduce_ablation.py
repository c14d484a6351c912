"""``python -m detcon_jax.reproduce --table=ablation``: the cells' configs, the table, and the
tiny budget end to end."""

from __future__ import annotations

import json

import pytest
from test_reproduce import _run, tiny_data  # noqa: F401  (the symlinked CamVid subset)

from detcon_jax import reproduce
from detcon_jax.reproduce import ablation
from detcon_jax.reproduce.common import mean_std


@pytest.mark.parametrize("row", sorted(ablation.ROWS))
@pytest.mark.parametrize("masks", ablation.MASKS)
def test_cells_set_their_loss_switches(row, masks, tmp_path):
    budget = reproduce.BUDGETS["small"]
    config = reproduce.load_config(budget, ablation.cell_method(budget, row, masks),
                                   str(tmp_path))
    assert (config.method, config.masks.source) == ("detcon_b", masks)
    assert config.loss.negatives == ("global" if row == "detcon" else "group")
    assert config.loss.negatives_group_size == (None if row == "detcon" else 4)
    assert config.loss.cross_view == (row != "no_all_negatives_no_two_views")
    assert config.loss.same_image_negatives


def _results(values):
    cells = {}
    for i, row in enumerate(ablation.ROWS):
        for j, masks in enumerate(ablation.MASKS):
            runs = [v + i + 10 * j for v in values]
            cells[f"{row}_{masks}"] = {"miou": mean_std(runs)}
    return {"budget": "tiny", "seeds": list(range(len(values))), "command": "c", "date": "d",
            "machine": "m", "wall_time_s": 1.0, "segmentation_split": "val", "group_size": 1,
            "batch_size": 4, "cells": cells}


def test_table_has_the_review_and_our_mean_spread_and_seeds():
    text = ablation.render_ablation(_results([20.0, 22.0]))
    line = next(x for x in text.splitlines() if x.startswith("| without all negatives |"))
    # review FH, ours FH (mean ± std [each seed]), review GT, ours GT.
    assert line == ("| without all negatives | 32.2 | 22.00 ± 1.41 [21.00, 23.00] | 38.5 | "
                    "32.00 ± 1.41 [31.00, 33.00] |")
    assert "1.41 to 1.41 mIoU points" in text
    assert "one seed only" in ablation.render_ablation(_results([20.0]))


@pytest.mark.slow  # three tiny pretrainings and probes, as subprocesses
def test_tiny_ablation_end_to_end(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "ablation"
    result = _run(tiny_data, out, "--table=ablation", "--budget=tiny", "--seeds=0",
                  "--ablation_masks=gt")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "ablation.json").read_text())
    assert set(results["cells"]) == {f"{r}_gt" for r in ablation.ROWS}
    for name, cell in results["cells"].items():
        (run,) = cell["runs"]
        assert 0.0 <= run["miou"] <= 100.0
        config = json.loads((out / "seed0" / name / "config.json").read_text())
        assert config["loss"]["cross_view"] == (cell["row"] != "no_all_negatives_no_two_views")
    assert "| DetCon | 33.6 | not run | 37.0 |" in (out / "ablation.md").read_text()
