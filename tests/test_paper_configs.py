"""Each row config of the paper's tables (experiments/paper/, docs/paper_tables.md) loads as
the train CLI loads it, validates, sets what its row says, and builds its state abstractly."""

import pytest
from test_experiments import REPO_ROOT, abstract_state, load_config, path_overrides

from detcon_jax import config as config_lib

PAPER = REPO_ROOT / "experiments" / "paper"

# (file, arg) -> the keys its row sets.
ROWS = {
    **{("imagenet.py", f"method={m},epochs={e}"): {"method": m, "num_epochs": e}
       for m in ("detcon_b", "detcon_s", "byol", "simclr") for e in (300, 1000)},
    ("imagenet.py", "method=detcon_b,masks=grid"): {"masks.source": "grid"},
    ("imagenet.py", "method=byol"): {"masks.source": "none", "masks.num_samples": 1},
    **{("loss_ablation.py", f"row={r},masks={k}"): {
        "masks.source": k, "loss.negatives": n, "loss.cross_view": c,
        "loss.negatives_group_size": g}
       for k in ("fh", "gt")
       for r, n, c, g in (("detcon", "global", True, None),
                          ("no_all_negatives", "group", True, 32),
                          ("no_all_negatives_no_two_views", "group", False, 32))},
    ("loss_ablation.py", "same_image_negatives=false"): {"loss.same_image_negatives": False},
}
# Parameter shapes depend only on the method: one abstract state per method.
STATE_ROWS = [("imagenet.py", f"method={m},epochs=300")
              for m in ("detcon_b", "detcon_s", "byol", "simclr")] + [
    ("loss_ablation.py", "row=no_all_negatives_no_two_views,masks=gt")]


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def _load(name, arg, tmp_path):
    spec = f"{PAPER / name}:{arg}"
    return load_config(spec, *path_overrides(spec, tmp_path))


@pytest.mark.parametrize("name, arg", sorted(ROWS))
def test_row_config_validates_and_sets_its_row(name, arg, tmp_path):
    config = _load(name, arg, tmp_path)
    config_lib.validate(config)
    config_lib.validate_runtime(config, device_count=8, process_count=2)
    for key, want in ROWS[name, arg].items():
        assert _get(config, key) == want, (name, arg, key)


@pytest.mark.parametrize("name, arg", STATE_ROWS)
def test_row_config_builds_its_state(name, arg, tmp_path):
    config = _load(name, arg, tmp_path)
    state = abstract_state(config)
    assert (state.target_params is not None) == config_lib.uses_target_network(config.method)


def test_masks_apply_to_detcon_only(tmp_path):
    with pytest.raises(Exception, match="masks applies to DetCon only"):
        _load("imagenet.py", "method=simclr,masks=grid", tmp_path)
