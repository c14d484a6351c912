"""The pretrainings: each method's config and command, run as train CLI subprocesses.

Every pretraining is ``python -m detcon_jax.train`` run as a user would run it, on the
packaged ``pretrain_config.py:BUDGET`` with the method's overrides (`train_command`); the
same config is built in-process by `load_config`. The random-initialisation baseline is the
initial state of that config, saved as a step-0 checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from ml_collections import config_dict

from detcon_jax import config as config_lib
from detcon_jax import configs
from detcon_jax.reproduce.budgets import Budget, Method, budget_spec, pretrain_config
from detcon_jax.reproduce.common import ReproduceError, duration, log

# The config file of every pretraining; it ships with the package.
PRETRAIN_CONFIG = pathlib.Path(__file__).resolve().with_name("pretrain_config.py")


def train_overrides(budget: Budget, method: Method, camvid_train: str) -> dict[str, Any]:
    """``config key -> value`` of one method on top of ``pretrain_config.py:BUDGET``."""
    return {
        "method": method.method or "detcon_b",
        "masks.source": method.masks if method.method else "gt",
        "seed": budget.pretrain_seed,
        "data.path": camvid_train,
        **dict(method.overrides),
    }


def train_command(budget: Budget, method: Method, camvid_train: str, workdir: str
                  ) -> list[str]:
    """The training CLI invocation of one method (``sys.executable -m detcon_jax.train ...``)."""
    command = [sys.executable, "-m", "detcon_jax.train",
               f"--config={PRETRAIN_CONFIG}:{budget_spec(budget)}", f"--workdir={workdir}"]
    for key, value in train_overrides(budget, method, camvid_train).items():
        command.append(f"--config.{key}={value}")
    return command


def load_config(budget: Budget, method: Method, camvid_train: str) -> config_dict.ConfigDict:
    """The same config the training CLI builds from `train_command`, built in-process."""
    config = configs.apply_overrides(pretrain_config(budget),
                                     train_overrides(budget, method, camvid_train))
    config_lib.validate(config)
    return config


def final_checkpoint(workdir: str, step: int) -> str:
    """Where the checkpoint of ``step`` lives (it exists once that step is complete)."""
    return os.path.join(workdir, "checkpoints", str(step), "state")


def run_training(budget: Budget, method: Method, camvid_train: str, workdir: str) -> dict[str, Any]:
    """Runs (or skips, when finished) one pretraining as a train CLI subprocess; returns its
    bookkeeping (``command``, ``workdir``, ``train_time_s``)."""
    command = train_command(budget, method, camvid_train, workdir)
    info: dict[str, Any] = {"command": shlex.join(command), "workdir": workdir}
    timing_path = os.path.join(workdir, "reproduce_train.json")
    if os.path.isdir(final_checkpoint(workdir, budget.num_steps)):
        log(f"train {method.name}: final checkpoint (step {budget.num_steps}) exists; skipped")
        if os.path.isfile(timing_path):
            with open(timing_path) as f:
                info["train_time_s"] = json.load(f).get("train_time_s")
        return info
    log(f"train {method.name}: {shlex.join(command)}")
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "train.log")
    start = time.perf_counter()
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            log_file.write(line)
            match = re.search(r"(step \d+/\d+ .*)$", line)
            if match:
                print(f"    {method.name}: {match.group(1).strip()}", flush=True)
            elif line.startswith("error:"):
                print(f"    {method.name}: {line.strip()}", flush=True)
        code = process.wait()
    elapsed = time.perf_counter() - start
    if code != 0 or not os.path.isdir(final_checkpoint(workdir, budget.num_steps)):
        raise ReproduceError(f"training {method.name} failed (exit status {code}); see "
                             f"{log_path}")
    with open(timing_path, "w") as f:
        json.dump({"train_time_s": elapsed}, f)
    log(f"train {method.name}: done in {duration(elapsed)} (log {log_path})")
    info["train_time_s"] = elapsed
    return info


def save_initial_state(budget: Budget, method: Method, camvid_train: str,
                       workdir: str) -> dict[str, Any]:
    """The random-init baseline: the experiment's initial state as a step-0 checkpoint."""
    info: dict[str, Any] = {"workdir": workdir, "command": None, "train_time_s": 0.0}
    if os.path.isdir(final_checkpoint(workdir, 0)):
        log(f"init {method.name}: step-0 checkpoint exists; skipped")
        return info
    import jax

    from detcon_jax import checkpoint as ckpt_lib
    from detcon_jax import step as step_lib

    start = time.perf_counter()
    config = load_config(budget, method, camvid_train)
    schedules = step_lib.make_schedules(config, total_steps=budget.num_steps, warmup_steps=0)
    optimizer = step_lib.make_optimizer(config, schedules)
    state = jax.jit(lambda key: step_lib.create_train_state(config, key, optimizer=optimizer))(
        jax.random.PRNGKey(config.seed))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"), keep=1,
        signature=config_lib.model_signature(config))
    try:
        checkpointer.save(0, state, data_position=0)
    finally:
        checkpointer.close()
    log(f"init {method.name}: initial state (seed {config.seed}) saved in "
        f"{duration(time.perf_counter() - start)}")
    return info
