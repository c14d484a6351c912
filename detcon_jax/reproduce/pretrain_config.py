"""Config file of the reproduction's pretrainings: the base config sized by a budget.

``python -m detcon_jax.reproduce`` runs every pretraining as

    python -m detcon_jax.train --config=.../detcon_jax/reproduce/pretrain_config.py:BUDGET \
        --workdir=OUT/NAME --config.method=... --config.masks.source=... \
        --config.seed=... --config.data.path=CAMVID/train

where ``BUDGET`` is ``tiny``, ``small`` or ``full``, optionally with changed fields
(``small,num_steps=100``; see ``budgets.parse_budget``). It ships with the package, so the
command works from an installed copy too.
"""

from ml_collections import config_dict

from detcon_jax.reproduce import budgets


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """The pretraining config of budget ``arg`` (default ``small``)."""
    return budgets.pretrain_config(budgets.parse_budget(arg or "small"))
