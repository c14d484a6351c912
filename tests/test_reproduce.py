"""The reproduction CLI end to end at the tiny budget on a few real CamVid / CIFAR-10 images."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import subprocess
import sys

import eval_helpers
import pytest
from cli_helpers import REPO, subprocess_env

from detcon_jax import reproduce

NUM_CAMVID = {"train": 6, "val": 3}
NUM_CIFAR = {"train": 4, "test": 2}  # per class; the tiny budget keeps 3 / 2 of them


def _link_subset(source: pathlib.Path, dest: pathlib.Path, count: int, suffix: str = "") -> list:
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in source.iterdir())[:count]
    for name in names:
        (dest / name).symlink_to(source / name)
    return names


@pytest.fixture(scope="module")
def tiny_data(data_dir: pathlib.Path, tmp_path_factory) -> dict[str, pathlib.Path]:
    """Symlinked subsets: CamVid train/val (images + labels) and CIFAR-10 train/test."""
    root = tmp_path_factory.mktemp("reproduce_data")
    camvid = root / "camvid"
    for split, count in NUM_CAMVID.items():
        names = _link_subset(data_dir / "camvid" / split / "images", camvid / split / "images",
                             count)
        (camvid / split / "labels").mkdir(parents=True)
        for name in names:
            label = pathlib.Path(name).stem + ".png"
            (camvid / split / "labels" / label).symlink_to(
                data_dir / "camvid" / split / "labels" / label)
    cifar = root / "cifar10"
    for split, count in NUM_CIFAR.items():
        for cls in sorted(p.name for p in (data_dir / "cifar10" / split).iterdir()):
            _link_subset(data_dir / "cifar10" / split / cls, cifar / split / cls, count)
    return {"camvid": camvid, "cifar10": cifar, "root": root}


def _run(data: dict[str, pathlib.Path], out: pathlib.Path, *extra: str
         ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "detcon_jax.reproduce", f"--camvid={data['camvid']}",
               f"--cifar10={data['cifar10']}", f"--out={out}", *extra]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tiny_data) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    out = tiny_data["root"] / "out"
    result = _run(tiny_data, out, "--budget=tiny", "--jobs=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.slow  # the tiny budget's whole pipeline
def test_tiny_budget_end_to_end(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == "tiny"
    assert list(results["methods"]) == [m.name for m in reproduce.METHODS]
    budget = reproduce.BUDGETS["tiny"]
    for method in reproduce.METHODS:
        row = results["methods"][method.name]
        evaluation = row["evaluation"]
        assert [row[p] for p in ("linear", "knn", "segmentation")] == [
            evaluation["linear"]["top1"], evaluation["knn"]["top1"],
            evaluation["segmentation"]["miou"]]
        # The segmentation figure, recomputed from the probe's confusion matrix.
        probe = json.loads((pathlib.Path(row["workdir"]) / "segmentation.json").read_text())
        _, miou, _ = eval_helpers.iou_percent(probe["confusion_matrix"])
        assert row["segmentation"] == pytest.approx(miou, abs=1e-9), method.name
        # Subsets as the budget says: 3 / 2 images per class of the 4 / 2 linked.
        assert evaluation["knn"]["num_train"] == 10 * budget.cifar_train_per_class
        assert evaluation["linear"]["num_test"] == 10 * budget.cifar_test_per_class
        # The folder has no test/: the segmentation probe is scored on val/.
        assert evaluation["segmentation"]["test_split"] == "val"
        assert evaluation["segmentation"]["num_train"] == NUM_CAMVID["train"]
        workdir = pathlib.Path(row["workdir"])
        if method.method is None:
            assert (workdir / "checkpoints" / "0" / "state").is_dir()
            assert row["final_loss"] is None
        else:
            assert (workdir / "checkpoints" / str(budget.num_steps) / "state").is_dir()
            assert math.isfinite(row["final_loss"])
            assert f"--config.method={method.method}" in row["train_command"]
            lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
            assert [x["step"] for x in lines] == list(range(1, budget.num_steps + 1))
    # Every claim, re-evaluated here from the reported numbers.
    rows = results["methods"]
    assert results["claims"]
    for claim in results["claims"]:
        # A clear verdict agrees with the raw comparison; the tiny budget is a smoke test.
        assert claim["smoke_test"], claim
        if claim["verdict"] in ("yes", "no"):
            assert claim["holds"] is (claim["verdict"] == "yes"), claim
            assert claim["holds"] is _claim_holds(claim["claim"], rows), claim
        else:
            assert claim["holds"] is None, claim
    assert results["segmentation_split"] == "val"
    for name in ("loss_curves.png", "probes.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    markdown = (out / "results.md").read_text()
    for method in reproduce.METHODS:
        assert f"| {method.label} |" in markdown, method.label
    assert "CamVid train 6 → val 3" in markdown


def _claim_holds(text: str, rows: dict) -> bool:
    """A claim of results.json evaluated from the rows: "A beats random init on at least one
    probe" or "A > B (probe title)" / "A >= B (probe title)", A and B method labels."""
    by_label = {m.label: rows[m.name] for m in reproduce.METHODS}
    probes = {"CIFAR-10 linear top-1 (%)": "linear", "CIFAR-10 k-NN top-1 (%)": "knn",
              "CamVid seg. probe mIoU (%)": "segmentation"}
    beats = re.fullmatch(r"(.+) beats random init on at least one probe", text)
    if beats:
        row = by_label[beats.group(1)]
        return any(row[p] > rows["random"][p] for p in probes.values())
    titles = "|".join(map(re.escape, probes))
    a, op, b, title = re.fullmatch(rf"(.+) (>=|>) (.+) \(({titles})\)", text).groups()
    va, vb = by_label[a][probes[title]], by_label[b][probes[title]]
    return va >= vb if op == ">=" else va > vb


def _probe_features(workdir: str, step: int, cifar: pathlib.Path, budget):
    """Centre-crop CIFAR features (train, test) of an encoder, as the CLIs compute them."""
    from detcon_jax.evaluate import common, features

    backbone, _ = features.load_backbone(workdir, step=step)
    data = common.ClassificationData(data=str(cifar), source="folder",
                                     image_size=budget.cifar_image_size,
                                     batch_size=budget.eval_batch_size, crop_padding=0,
                                     num_classes=10)
    return data, backbone, data.features(backbone, split="train"), data.features(
        backbone, split="test")


@pytest.mark.slow  # the tiny budget's whole pipeline
def test_cifar_figures_recomputed_from_the_same_features(tiny_run):
    """k-NN (independent float64 vote) and linear top-1 of two encoders (random init and
    DetCon-B GT) recomputed from their checkpoints on the budget's CIFAR-10 subset, with the
    probes' documented inputs (full-image crops, k = budget.knn_k, T = 0.07). Top-1 counts
    whole images: compared exactly."""
    from detcon_jax.evaluate import linear

    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    budget = reproduce.BUDGETS["tiny"]
    cifar = out / "data" / f"cifar10_{budget.cifar_train_per_class}x{budget.cifar_test_per_class}"
    for name in ("random", "detcon_b_gt"):
        row = results["methods"][name]
        data, backbone, (train_x, train_y), (test_x, test_y) = _probe_features(
            row["workdir"], row["steps"], cifar, budget)
        assert len(train_y) == 10 * budget.cifar_train_per_class
        assert row["knn"] == pytest.approx(eval_helpers.knn_top1(
            train_x, train_y, test_x, test_y, k=budget.knn_k, temperature=0.07,
            num_classes=10), abs=1e-9), name
        passes = data.augmented_features(backbone, split="train",
                                         passes=budget.linear_augment_passes, seed=0)
        want = linear.linear_probe_protocol(
            passes, train_y, test_x, test_y, heldout_x=train_x,
            learning_rates=budget.linear_learning_rates, seed=0, num_classes=10,
            num_epochs=budget.linear_epochs, batch_size=budget.linear_batch_size)
        assert row["linear"] == want["top1"], name
        assert row["evaluation"]["linear"]["sweep"] == want["sweep"], name


@pytest.mark.slow  # the tiny budget's whole pipeline
def test_rerun_skips_finished_stages(tiny_data, tiny_run):
    out, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/eval.json")}
    assert len(before) == len(reproduce.METHODS)
    result = _run(tiny_data, out, "--budget=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    for method in reproduce.METHODS:
        assert f"evaluate {method.name}: cached" in result.stdout
    assert "train detcon_b_gt: final checkpoint (step 2) exists; skipped" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.slow  # the tiny budget's whole pipeline
def test_other_budget_in_same_out_is_refused(tiny_data, tiny_run):
    out, _ = tiny_run
    result = _run(tiny_data, out, "--budget=small")
    assert result.returncode == 2
    assert "error:" in result.stderr and "budget 'tiny' with 2 steps" in result.stderr
    result = _run(tiny_data, out, "--budget=tiny", "--pretrain_seed=1")
    assert result.returncode == 2
    assert "pretraining seed 0" in result.stderr, result.stderr


def test_pretrain_seed_reaches_every_config_and_the_command(tiny_data):
    train = str(tiny_data["camvid"] / "train")
    budget = dataclasses.replace(reproduce.BUDGETS["small"], pretrain_seed=3)
    for method in reproduce.METHODS:
        assert reproduce.load_config(budget, method, train).seed == 3
        assert "--config.seed=3" in reproduce.train_command(budget, method, train, "/tmp/w")


def test_bad_data_folder_is_one_line_error(tiny_data, tmp_path):
    result = _run({"camvid": tmp_path / "missing", "cifar10": tiny_data["cifar10"]},
                  tmp_path / "out", "--budget=tiny")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing/train/images" in result.stderr


@pytest.mark.parametrize("budget", sorted(reproduce.BUDGETS))
def test_every_budget_builds_valid_configs(budget, tiny_data):
    """Each method's config (as the train CLI would build it) passes validation; only the
    method and mask source differ between methods."""
    train = str(tiny_data["camvid"] / "train")
    configs = {m.name: reproduce.load_config(reproduce.BUDGETS[budget], m, train)
               for m in reproduce.METHODS}
    for name, config in configs.items():
        assert config.num_steps == reproduce.BUDGETS[budget].num_steps
        assert config.data.image_size == reproduce.BUDGETS[budget].image_size
        # The budget's target EMA replaces the experiment file's (0.99): at the small
        # budget's few hundred steps 0.99 leaves the target close to its initialisation.
        assert config.optim.base_ema == reproduce.BUDGETS[budget].base_ema
        reference = configs["detcon_b_gt"].to_dict()
        mine = config.to_dict()
        for key in ("method", "masks"):
            reference.pop(key)
            mine.pop(key)
        assert mine == reference, name
    assert configs["byol"].masks.source == "none" and configs["byol"].method == "byol"
    assert configs["detcon_b_fh"].masks.source == "fh"


def _row(linear, knn, seg, n_test=None):
    row = {"linear": linear, "knn": knn, "segmentation": seg}
    if n_test:
        row["evaluation"] = {"linear": {"num_test": n_test}, "knn": {"num_test": n_test}}
    return row


def _table(values, n_test=None, shift=0.0):
    return {name: _row(*(v + shift for v in vals), n_test=n_test)
            for name, vals in values.items()}


# Method -> (linear, knn, seg): clear wins and losses at large differences.
KNOWN = {
    "detcon_b_gt": (30, 30, 40), "detcon_b_fh": (30, 30, 35),
    "detcon_b_grid": (30, 30, 36), "detcon_s_gt": (20, 20, 20),
    "byol": (20, 20, 30), "simclr": (10, 10, 25), "random": (15, 15, 25),
}


def _verdicts(claims):
    return {c["claim"]: c["verdict"] for c in claims}


def test_claims_from_pretraining_seeds_clear_wins_and_ties():
    # Three seeds, spread +-0.5 around each value: standard error 0.29 per method.
    runs = [_table(KNOWN, shift=d) for d in (-0.5, 0.0, 0.5)]
    claims = reproduce.check_claims(runs, budget="small")
    verdicts = _verdicts(claims)
    assert verdicts["DetCon-S (GT masks) beats random init on at least one probe"] == "yes"
    # 10/10/25 vs 15/15/25: worse on two probes, equal on the third.
    assert verdicts["SimCLR beats random init on at least one probe"] == "tie"
    worse = [dict(run, simclr=_row(10, 10, 20)) for run in runs]
    assert _verdicts(reproduce.check_claims(worse))[
        "SimCLR beats random init on at least one probe"] == "no"
    assert verdicts["DetCon-B (FH masks) > BYOL (CamVid seg. probe mIoU (%))"] == "yes"
    assert verdicts["DetCon-S (GT masks) > SimCLR (CamVid seg. probe mIoU (%))"] == "no"
    assert verdicts["DetCon-B (GT masks) >= DetCon-B (FH masks) (CamVid seg. probe mIoU (%))"] \
        == "yes"
    assert verdicts[
        "DetCon-B (FH masks) >= DetCon-B (grid masks) (CamVid seg. probe mIoU (%))"] == "no"
    # Equal values: a tie, neither holding nor failing.
    tie = "DetCon-B (FH masks) >= DetCon-B (grid masks) (CIFAR-10 linear top-1 (%))"
    assert verdicts[tie] == "tie"
    by_claim = {c["claim"]: c for c in claims}
    assert by_claim[tie]["holds"] is None and by_claim[tie]["seeds"] == 3
    assert not any(c["smoke_test"] for c in claims)
    assert "± 0.29" in by_claim[tie]["ours"]
    # A 1.0 difference is within the seeds' noise when they spread by +-3 ...
    wide = [_table(KNOWN, shift=d) for d in (-3.0, 0.0, 3.0)]
    wide[0]["detcon_b_fh"] = _row(29, 30, 31)
    assert _verdicts(reproduce.check_claims(wide))[
        "DetCon-B (FH masks) > BYOL (CamVid seg. probe mIoU (%))"] == "tie"
    # ... and outside it when they agree to 0.1.
    narrow = [_table(KNOWN, shift=d) for d in (-0.1, 0.0, 0.1)]
    for run in narrow:
        run["detcon_b_fh"] = dict(run["byol"], segmentation=run["byol"]["segmentation"] + 1)
    assert _verdicts(reproduce.check_claims(narrow))[
        "DetCon-B (FH masks) > BYOL (CamVid seg. probe mIoU (%))"] == "yes"


def test_one_seed_uses_the_test_sets_sampling_noise():
    # 3.86 vs 3.86 (the example) is a tie, not "yes"; 20 test images make 30 vs 15
    # a tie too (binomial standard errors of ~10 points), 10,000 make it a clear win.
    table = _table(KNOWN, n_test=20)
    table["detcon_b_gt"] = _row(3.86, 30, 40, n_test=20)
    table["detcon_b_fh"] = _row(3.86, 30, 35, n_test=20)
    claims = {c["claim"]: c for c in reproduce.check_claims(table, budget="tiny")}
    linear = "DetCon-B (GT masks) >= DetCon-B (FH masks) (CIFAR-10 linear top-1 (%))"
    assert claims[linear]["verdict"] == "tie" and claims[linear]["holds"] is None
    beats = "DetCon-B (GT masks) beats random init on at least one probe"
    assert claims[beats]["verdict"] == "tie"
    # The mIoU has no sampling formula: one seed cannot decide it.
    seg = "DetCon-B (FH masks) > BYOL (CamVid seg. probe mIoU (%))"
    assert claims[seg]["verdict"].startswith("no noise estimate")
    assert all(c["smoke_test"] for c in claims.values())
    big = reproduce.check_claims(_table(KNOWN, n_test=10_000), budget="small")
    assert _verdicts(big)[beats] == "yes"


def test_report_marks_the_smoke_test_and_the_error_bars():
    from detcon_jax.reproduce import report

    methods = _table(KNOWN, n_test=20)
    others = [{"out": "o", "pretrain_seed": 1, "methods": _table(KNOWN, shift=1.0)}]
    results = {"budget": "tiny", "command": "c", "date": "d", "machine": "m",
               "wall_time_s": 1.0, "stage_time_s": 1.0, "methods": methods,
               "other_seeds": others,
               "splits": {"pretrain": "p", "linear": "l", "knn": "k", "segmentation": "s"}}
    results["claims"] = reproduce.check_claims(report.seed_runs(results), budget="tiny")
    markdown = report.render_markdown(results)
    assert "smoke test of the pipeline" in markdown and "(smoke test) |" in markdown
    assert "means over 2 pretraining seeds" in markdown
    assert "| 30.50 ± 0.50 | 30.50 ± 0.50 | 40.50 ± 0.50 |" in markdown  # DetCon-B (GT)
