"""Small-scale reproduction of the paper's comparisons: pretrain six methods, probe all seven.

    python -m detcon_jax.reproduce --camvid=DIR --cifar10=DIR --out=DIR \
        [--budget=small[,FIELD=VALUE...]]

Pretrains, with the same model, data, step budget and optimiser, on the CamVid ``train``
images (``DIR/train/images``; ``DIR/train/labels`` give the ground-truth masks):

==================  =========  ==============================================
``detcon_b_gt``     DetCon-B   CamVid ground-truth label maps as masks
``detcon_b_fh``     DetCon-B   Felzenszwalb-Huttenlocher masks (computed once)
``detcon_b_grid``   DetCon-B   4 x 4 grid (spatial heuristic) masks
``detcon_s_gt``     DetCon-S   ground-truth masks
``byol``            BYOL       one whole-image mask
``simclr``          SimCLR     one whole-image mask
``random``          --         no training: the shared initial online network
==================  =========  ==============================================

then evaluates every encoder with three probes: the CIFAR-10 linear probe and weighted k-NN
(``detcon_jax.evaluate.linear`` / ``knn``, on one set of frozen features) and the CamVid
segmentation linear probe (``detcon_jax.evaluate.segmentation --mode=probe``, scored on
``test/`` when the CamVid folder has one, else ``val/``). Writes ``OUT/results.json``,
``OUT/results.md`` (every number with its data split and the paper's corresponding claim),
``OUT/loss_curves.png`` and ``OUT/probes.png``.

Every pretraining is the training CLI run as a subprocess, exactly as a user would run it:
``python -m detcon_jax.train --config=.../detcon_jax/reproduce/pretrain_config.py:BUDGET
--workdir=OUT/NAME --config.method=... --config.masks.source=... --config.seed=...
--config.data.path=...`` (the config file ships with the package: the base config with the
CamVid data settings and the budget's sizes; the command is printed and stored in
``results.json``). The random-initialisation baseline is the initial state of that config
(the online network every BYOL-style run starts from), saved as a step-0 checkpoint.

``--pretrain_seed=N`` seeds every pretraining and the random-init baseline (the probes keep
``--seed``): repeat a run with other values to see the pretraining-seed noise.

``--jobs=N`` runs N pretrainings at once (each is its own process; useful on a many-core CPU,
where one XLA:CPU program does not use every core).

Resuming: a run that is interrupted can be started again with the same arguments. Methods
whose workdir holds the final checkpoint are not trained again (an unfinished one resumes
from its newest checkpoint), and probe results cached in ``OUT/NAME/eval.json`` are reused.

``--table=ablation`` runs instead DetCon-B's negatives / two-views ablation (three loss
settings x FH / GT masks x ``--seeds``, CamVid probe only; ``reproduce/ablation.py``) and
writes ``OUT/ablation.json`` and ``OUT/ablation.md``: the review's table with ours beside it.

``--table=learned`` runs DetCon-B with learned masks (``masks.source='learned'``) beside FH,
grid and GT masks x ``--seeds``, all three probes, and the learned masks' agreement with the
GT masks at every checkpoint (``reproduce/learned.py``); its FH and GT cells are the
ablation's ``detcon`` row (same workdirs), pretrained once for both tables with one ``--out``.
Writes ``OUT/learned.json``, ``OUT/learned.md`` and ``OUT/learned_agreement.png``.

Budgets (``--budget=NAME``; ``--budget=NAME,FIELD=VALUE,...`` changes any scalar field of
`Budget`, e.g. ``small,image_size=128,num_steps=600``):

* ``tiny``: 32 px, a tiny ResNet-18 (one basic block of 16 channels per group), 2 steps,
  2-epoch probes; for the end-to-end test (about a minute on 2 CPU cores with a few images).
* ``small`` (default): what a CPU can run in under an hour (measured on 2 shared cores):
  the CamVid experiment's half-width ResNet-18 (32-64-128-256 channels) with 512 -> 128 MLPs,
  96 px crops, batch 16, 300 steps each; learning rate 1.0 (base 16 x 16/256) rather than
  the official base 0.2, which at batch 16 would barely move the weights in 300 steps (LARS
  scales each layer's step by lr x 1e-3); target EMA base 0.9 rather than the CamVid
  config's 0.99: with the cosine increase to 1, 0.99 leaves about a fifth of the random
  initialisation in the target at the end of 300 steps (the product of the rates is
  exp(-1.5)) and BYOL then largely distils a random network, while 0.9 makes the target
  follow the online network about ten steps behind; probes: CIFAR-10 2,000 train / 1,000
  test images (the first 200 / 100 per class in file order) upsampled to 96 px, linear probe
  100 epochs on centre-crop features with a 5-rate sweep, k-NN k=20 T=0.07; CamVid probe at
  128 px, 50 epochs, 2 random-crop passes.
* ``full``: what a GPU would run (not run by this project): ResNet-50 at 224 px with the
  official 4096 -> 256 heads, batch 128, 5,000 steps (about 1,700 CamVid epochs), LR 1.0;
  probes on all CIFAR-10 images at 128 px with 10 augmented passes, CamVid at 224 px with 4
  passes. Expect a few GPU hours for the six pretrainings.

Deviations from the paper's protocol, all for scale: pretraining on 367 street scenes instead
of ImageNet/COCO, a few hundred steps instead of hundreds of thousands, and linear probes
instead of fine-tuned Mask R-CNN / FCN transfer. The numbers are ours; the paper's claims are
quoted beside them only qualitatively.

Verdicts carry their noise (``claims``): a difference within two combined standard errors is a
tie; the error bars come from the pretraining seeds when ``--seed_runs`` names finished runs
of the same budget with other ``--pretrain_seed`` values, else from the probes' test-set
sampling noise (top-1 accuracies only). The ``tiny`` budget's verdicts are marked as a smoke
test.

Modules (imports run one way, ``cli`` down to ``common``): ``budgets`` (methods, budgets and
their pretraining configs), ``pretrain_config`` (the config file of the train subprocesses),
``training`` (pretraining subprocesses, the random-init checkpoint), ``data`` (the CamVid
check, the CIFAR-10 subset), ``evaluation`` (the probes), ``claims`` (the paper's claims on
our numbers), ``report`` (``results.md`` and plots), ``ablation`` (``--table=ablation``),
``learned`` (``--table=learned``), ``cli``.
"""

from detcon_jax.reproduce.ablation import cell_method, render_ablation
from detcon_jax.reproduce.budgets import (
    BUDGETS,
    METHODS,
    PROBES,
    Budget,
    Method,
    budget_spec,
    parse_budget,
    pretrain_config,
)
from detcon_jax.reproduce.claims import check_claims
from detcon_jax.reproduce.cli import main, run
from detcon_jax.reproduce.common import ReproduceError
from detcon_jax.reproduce.learned import render_learned
from detcon_jax.reproduce.report import render_markdown
from detcon_jax.reproduce.training import (
    PRETRAIN_CONFIG,
    final_checkpoint,
    load_config,
    train_command,
    train_overrides,
)

__all__ = [
    "BUDGETS",
    "METHODS",
    "PRETRAIN_CONFIG",
    "PROBES",
    "Budget",
    "Method",
    "ReproduceError",
    "budget_spec",
    "cell_method",
    "check_claims",
    "final_checkpoint",
    "load_config",
    "main",
    "parse_budget",
    "pretrain_config",
    "render_ablation",
    "render_learned",
    "render_markdown",
    "run",
    "train_command",
    "train_overrides",
]
