"""``python -m detcon_jax.reproduce --table=learned``: the cells' configs (FH and GT are the
ablation's pretrainings), the report on hand-made results, and the tiny budget end to end."""

from __future__ import annotations

import json

import pytest
from test_reproduce import _run, tiny_data  # noqa: F401  (the symlinked CamVid subset)

from detcon_jax import reproduce
from detcon_jax.reproduce import ablation, learned
from detcon_jax.reproduce.common import mean_std


@pytest.mark.parametrize("masks", ["fh", "gt"])
def test_fh_and_gt_cells_are_the_ablations_detcon_pretrainings(masks, tmp_path):
    budget = reproduce.BUDGETS["small"]
    ours, theirs = learned.cell_method(budget, masks), ablation.cell_method(budget, "detcon",
                                                                            masks)
    assert ours.name == f"detcon_{masks}"  # the workdir OUT/seedS/detcon_{masks}
    assert (reproduce.train_command(budget, ours, str(tmp_path), str(tmp_path / "w"))
            == reproduce.train_command(budget, theirs, str(tmp_path), str(tmp_path / "w")))


def test_learned_cell_is_the_camvid_arm_at_the_budget_and_keeps_every_checkpoint(tmp_path):
    budget = reproduce.BUDGETS["small"]
    config = reproduce.load_config(budget, learned.cell_method(budget, "learned"), str(tmp_path))
    assert (config.method, config.masks.source) == ("detcon_b", "learned")
    lm = config.masks.learned
    # 96 px views: a 128 px covering window, block group 3 (8 x 8), as the CamVid arm.
    assert (lm.image_size, lm.layer, lm.num_clusters, lm.network) == (128, 3, 8, "target")
    assert (lm.bootstrap_source, lm.bootstrap_steps) == ("grid", 100)
    assert config.checkpoint.keep == 7 == 300 // config.checkpoint.every_steps + 1
    grid = reproduce.load_config(budget, learned.cell_method(budget, "grid"), str(tmp_path))
    assert (grid.masks.source, grid.checkpoint.keep) == ("grid", 1)


def _results(values):
    cells = {}
    for i, masks in enumerate(learned.CELLS):
        cells[masks] = {p: mean_std([v + i + 10 * j for v in values])
                        for j, p in enumerate(reproduce.PROBES)}
    agreement = {"learned": {"0": mean_std([0.1 + 0.01 * k for k in range(len(values))]),
                             "50": mean_std([0.3 + 0.01 * k for k in range(len(values))])},
                 "baselines": {"fh": {"mean": 0.42}, "grid": {"mean": 0.2}},
                 "images": "CamVid train, all images, un-augmented", "void_ids": [11]}
    return {"budget": "small", "seeds": list(range(len(values))), "command": "c", "date": "d",
            "machine": "m", "wall_time_s": 1.0, "segmentation_split": "val",
            "learned_setting": "s", "cells": cells, "agreement": agreement}


def test_tables_have_mean_spread_and_seeds_and_the_agreement_over_training(tmp_path):
    text = learned.render_learned(_results([20.0, 22.0]))
    lines = text.splitlines()
    # learned is the first cell (i = 0): linear, k-NN (+10), segmentation (+20).
    assert ("| learned masks | 21.00 ± 1.41 [20.00, 22.00] | 31.00 ± 1.41 [30.00, 32.00] | "
            "41.00 ± 1.41 [40.00, 42.00] |") in lines
    assert any(x.startswith("| GT masks | 24.00 ± 1.41 [23.00, 25.00] |") for x in lines)
    assert lines.count("| 50 | 0.305 ± 0.007 [0.300, 0.310] | 0.420 | 0.200 |") == 1
    assert "1.41 to 1.41 points" in text
    assert "one seed only" in learned.render_learned(_results([20.0]))
    path = learned.plot_agreement(_results([20.0, 22.0]), str(tmp_path))
    assert path.endswith("learned_agreement.png") and (tmp_path / "learned_agreement.png").stat(
    ).st_size > 1000


def test_learned_table_needs_cifar(tmp_path, capsys):
    code = reproduce.main(["--table=learned", f"--camvid={tmp_path}", f"--out={tmp_path / 'o'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --cifar10 is required for --table=learned"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # four tiny pretrainings, their probes and the agreements, as subprocesses
def test_tiny_learned_table_end_to_end(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "learned"
    result = _run(tiny_data, out, "--table=learned", "--budget=tiny", "--seeds=0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "learned.json").read_text())
    assert list(results["cells"]) == list(learned.CELLS)
    for cell in results["cells"].values():
        (run,) = cell["runs"]
        assert all(0.0 <= run[p] <= 100.0 for p in reproduce.PROBES)
    assert (out / "seed0" / "detcon_fh" / "checkpoints" / "2").is_dir()  # the ablation's name
    config = json.loads((out / "seed0" / "detcon_learned" / "config.json").read_text())
    assert config["masks"]["source"] == "learned"
    # Step 0 (the initial network) and the kept checkpoint of step 2.
    assert list(results["agreement"]["learned"]) == ["0", "2"]
    for value in [*results["agreement"]["learned"].values(),
                  *results["agreement"]["baselines"].values()]:
        assert 0.0 < value["mean"] <= 1.0
    text = (out / "learned.md").read_text()
    assert "| learned masks |" in text and "| 2 |" in text
    assert (out / "learned_agreement.png").is_file()
