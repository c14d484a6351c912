"""Tests for the launch scripts: syntax, shellcheck, --help, --dry-run, required flags.

Nothing here needs JAX, gcloud or SLURM: the dry runs print commands, and the few checks
that execute a script's output do so against stand-in executables in a temporary dir.
"""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "gpu_slurm.sbatch", "local.sh"]
SHELLCHECK_INSTALL = "apt-get update && apt-get install -y shellcheck"

TPU_FLAGS = [
    "--project=proj-x",
    "--zone=us-central2-b",
    "--name=pod-x",
    "--tpu_type=v4-32",
    "--config=experiments/detcon_b_imagenet.py",
    "--workdir=gs://bucket-x/run",
]
OVERRIDE_WITH_QUOTES = "--config.note=it's a b"


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without variables that would steer the scripts."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "DETCON_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE"))
    }
    env.update(extra)
    return env


def run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=REPO,
        timeout=timeout,
    )


def lines_of(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def index_of(lines: list[str], predicate) -> int:
    for i, line in enumerate(lines):
        if predicate(line):
            return i
    raise AssertionError("no matching line in:\n" + "\n".join(lines))


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- all scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.fail(f"shellcheck is not installed; install it with: {SHELLCHECK_INSTALL}")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(LAUNCH / script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--dry-run" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable(script):
    assert os.access(LAUNCH / script, os.X_OK)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_fails(script):
    result = run(script, "--dry-run", "--no_such_flag=1")
    assert result.returncode != 0
    assert "--no_such_flag" in result.stderr


# ---------------------------------------------------------------- tpu_pod.sh


@pytest.fixture
def recording_path(tmp_path):
    """A PATH whose gcloud/git/scontrol/srun only record that they were called."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "called"
    for name in ("gcloud", "git", "srun", "sbatch"):
        write_executable(bindir / name, f'#!/bin/sh\necho "{name} $*" >> {marker}\n')
    return f"{bindir}:{os.environ['PATH']}", marker


def test_tpu_dry_run_sequence(recording_path):
    path, marker = recording_path
    result = run(
        "tpu_pod.sh", "all", "--delete", "--dry-run", *TPU_FLAGS, "--", "--config.num_epochs=300",
        env=clean_env(PATH=path),
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "a dry run executed a command"
    lines = lines_of(result.stdout)
    assert all(line.startswith(("gcloud ", "git ")) for line in lines), lines

    create = index_of(lines, lambda s: s.startswith("gcloud compute tpus tpu-vm create pod-x"))
    archive = index_of(lines, lambda s: s.startswith("git ") and " archive " in s)
    scp = index_of(lines, lambda s: " tpu-vm scp " in s)
    install = index_of(lines, lambda s: " tpu-vm ssh " in s and "pip install -e ." in s)
    train = index_of(lines, lambda s: " tpu-vm ssh " in s and "detcon_jax.train" in s)
    logs = index_of(lines, lambda s: " tpu-vm ssh " in s and "tail " in s)
    delete = index_of(lines, lambda s: s.startswith("gcloud compute tpus tpu-vm delete pod-x"))
    assert create < archive < scp < install < train < logs < delete

    for i in (create, scp, install, train, logs, delete):
        assert "--project=proj-x" in lines[i] and "--zone=us-central2-b" in lines[i]
    assert "--accelerator-type=v4-32" in lines[create]
    assert "--version=tpu-ubuntu2204-base" in lines[create]
    for i in (scp, install, train):
        assert "--worker=all" in lines[i]
    assert "--worker=0" in lines[logs]
    train_cmd = lines[train]
    for piece in (
        "--config=experiments/detcon_b_imagenet.py",
        "--workdir=gs://bucket-x/run",
        "--distributed",
        "--config.num_epochs=300",
    ):
        assert piece in train_cmd


def test_tpu_install_pins_the_setup_py_jax_version(recording_path):
    pin = re.search(r'"jax==([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    path, _ = recording_path
    result = run("tpu_pod.sh", "install", "--dry-run", *TPU_FLAGS, env=clean_env(PATH=path))
    assert result.returncode == 0, result.stderr
    install = [s for s in lines_of(result.stdout) if "pip install" in s]
    assert len(install) == 1
    assert f"jax[tpu]=={pin}" in install[0]
    assert "--python 3.11" in install[0]


def test_tpu_install_from_git_repo(recording_path):
    path, _ = recording_path
    result = run(
        "tpu_pod.sh", "install", "--dry-run", *TPU_FLAGS,
        "--repo=https://example.org/x/detcon_jax.git", "--ref=v1",
        env=clean_env(PATH=path),
    )
    assert result.returncode == 0, result.stderr
    lines = lines_of(result.stdout)
    assert not any(" scp " in s or " archive " in s for s in lines)
    (install,) = lines
    assert "git clone https://example.org/x/detcon_jax.git detcon_jax" in install
    assert "checkout v1" in install
    assert install.index("git clone") < install.index("pip install -e .")


@pytest.mark.parametrize(
    "tpu_type, version",
    [("v6e-16", "v2-alpha-tpuv6e"), ("v5p-64", "v2-alpha-tpuv5"),
     ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v3-8", "tpu-ubuntu2204-base")],
)
def test_tpu_default_runtime_version(tpu_type, version, recording_path):
    path, _ = recording_path
    flags = [f for f in TPU_FLAGS if not f.startswith("--tpu_type")]
    result = run("tpu_pod.sh", "create", "--dry-run", *flags, f"--tpu_type={tpu_type}",
                 env=clean_env(PATH=path))
    assert result.returncode == 0, result.stderr
    assert f"--version={version}" in result.stdout


@pytest.mark.parametrize(
    "action, dropped, named",
    [("create", "--project", "--project"), ("logs", "--zone", "--zone"),
     ("delete", "--name", "--name"), ("create", "--tpu_type", "--tpu_type"),
     ("train", "--config", "--config"), ("train", "--workdir", "--workdir")],
)
def test_tpu_missing_parameter(action, dropped, named):
    flags = [f for f in TPU_FLAGS if not f.startswith(dropped + "=")]
    result = run("tpu_pod.sh", action, "--dry-run", *flags)
    assert result.returncode != 0
    assert named in result.stderr and "error" in result.stderr


def test_tpu_parameters_from_environment():
    env = clean_env(DETCON_PROJECT="p-env", DETCON_ZONE="z-env", DETCON_TPU_NAME="n-env")
    result = run("tpu_pod.sh", "delete", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == [
        "gcloud compute tpus tpu-vm delete n-env --project=p-env --zone=z-env --quiet"
    ]


def test_tpu_no_action_or_unknown_version_fails():
    result = run("tpu_pod.sh", "--dry-run", *TPU_FLAGS)
    assert result.returncode != 0 and "no action" in result.stderr
    flags = [f for f in TPU_FLAGS if not f.startswith("--tpu_type")]
    result = run("tpu_pod.sh", "create", "--dry-run", *flags, "--tpu_type=v9x-8")
    assert result.returncode != 0 and "--version" in result.stderr


def remote_command(line: str) -> str:
    (command,) = [a for a in shlex.split(line) if a.startswith("--command=")]
    return command[len("--command="):]


def test_tpu_train_and_logs_commands_run_on_a_worker(tmp_path):
    """Runs the printed remote commands with bash in a fake worker home directory."""
    result = run("tpu_pod.sh", "train", "logs", "--dry-run", *TPU_FLAGS, "--",
                 "--config.num_epochs=300", OVERRIDE_WITH_QUOTES)
    assert result.returncode == 0, result.stderr
    train_line, logs_line = lines_of(result.stdout)

    home = tmp_path / "home"
    (home / "detcon_jax").mkdir(parents=True)
    (home / "detcon_venv" / "bin").mkdir(parents=True)
    argfile = home / "args"
    write_executable(
        home / "detcon_venv" / "bin" / "python",
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@" > {argfile}\necho step 1 done\nexit 7\n',
    )
    worker_env = clean_env(HOME=str(home))

    def on_worker(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=home, env=worker_env,
                              capture_output=True, text=True, timeout=30)

    started = on_worker(remote_command(train_line))
    assert started.returncode == 0, started.stderr
    assert "started training" in started.stdout
    deadline = time.monotonic() + 20
    while not (home / "detcon_train.exit").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (home / "detcon_train.exit").read_text().strip() == "7"
    assert argfile.read_text().splitlines() == [
        str(home / "detcon_jax"),
        "-m", "detcon_jax.train",
        "--config=experiments/detcon_b_imagenet.py",
        "--workdir=gs://bucket-x/run",
        "--distributed",
        "--config.num_epochs=300",
        OVERRIDE_WITH_QUOTES,
    ]

    logs = on_worker(remote_command(logs_line))
    assert "step 1 done" in logs.stdout
    assert "exited with status 7" in logs.stdout


def test_tpu_train_refuses_while_a_run_is_alive(tmp_path):
    result = run("tpu_pod.sh", "train", "--dry-run", *TPU_FLAGS)
    (train_line,) = lines_of(result.stdout)
    home = tmp_path / "home"
    (home / "detcon_jax").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (home / "detcon_train.pid").write_text(f"{sleeper.pid}\n")
        refused = subprocess.run(["bash", "-c", remote_command(train_line)], cwd=home,
                                 env=clean_env(HOME=str(home)), capture_output=True, text=True,
                                 timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert refused.returncode != 0
    assert "already running" in refused.stderr


# ---------------------------------------------------------------- gpu_slurm.sbatch

SLURM_ARGS = ["--config=experiments/detcon_b_imagenet.py", "--workdir=/shared/run"]


@pytest.fixture
def fake_slurm(tmp_path, recording_path):
    path, marker = recording_path
    bindir = tmp_path / "slurmbin"
    bindir.mkdir()
    write_executable(
        bindir / "scontrol",
        '#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 1\n'
        # A long host list, as on a big allocation, also catches SIGPIPE-prone parsing.
        "echo gpu07\necho gpu08\nseq 1 100000\n",
    )
    env = clean_env(
        PATH=f"{bindir}:{path}",
        SLURM_JOB_ID="1234",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_NNODES="2",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="32",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env, marker


def test_slurm_header():
    text = (LAUNCH / "gpu_slurm.sbatch").read_text().splitlines()
    first_command = index_of(text, lambda s: s.strip() and not s.startswith("#"))
    directives = [s for s in text if s.startswith("#SBATCH")]
    # sbatch stops reading #SBATCH lines at the first command.
    assert all(text.index(d) < first_command for d in directives)
    for expected in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node="):
        assert any(d.startswith(f"#SBATCH {expected}") for d in directives), expected
    assert not any(re.search(r"--(partition|account)=", d) for d in directives)


def test_slurm_dry_run_in_allocation(fake_slurm):
    env, marker = fake_slurm
    result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, "--config.num_epochs=300",
                 env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "a dry run executed a command"
    lines = lines_of(result.stdout)
    # JAX's SLURM detector derives the same port from the job id.
    port = 61440 + 1234 % 4096
    assert lines[:2] == [
        f"export JAX_COORDINATOR_ADDRESS=gpu07:{port}",
        "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",
    ]
    srun = shlex.split(lines[2])
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=32"]
    assert srun[3:] == ["python3", "-m", "detcon_jax.train", *SLURM_ARGS, "--distributed",
                        "--config.num_epochs=300"]
    assert len(lines) == 3


def test_slurm_gpu_count_and_port_overrides(fake_slurm):
    env, _ = fake_slurm
    del env["SLURM_GPUS_ON_NODE"]
    env.update(SLURM_GPUS_PER_NODE="a100:4", JAX_COORDINATOR_PORT="23456")
    result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert "export JAX_COORDINATOR_ADDRESS=gpu07:23456" in result.stdout
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3\n" in result.stdout


def test_slurm_one_task_per_gpu_leaves_pinning_to_jax(fake_slurm):
    env, _ = fake_slurm
    env.update(SLURM_NTASKS_PER_NODE="8", SLURM_NTASKS="16")
    result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert "JAX_LOCAL_DEVICE_IDS" not in result.stdout
    assert "JAX_COORDINATOR_ADDRESS=gpu07:" in result.stdout


@pytest.mark.parametrize("listed, expected", [(0, None), (2, "0,1")])
def test_slurm_gpu_count_from_nvidia_smi(listed, expected, fake_slurm, tmp_path):
    env, _ = fake_slurm
    del env["SLURM_GPUS_ON_NODE"]
    bindir = tmp_path / "smibin"
    bindir.mkdir()
    gpus = "".join(f"echo 'GPU {i}: Fake (UUID: GPU-{i})'\n" for i in range(listed))
    write_executable(bindir / "nvidia-smi", "#!/bin/sh\n" + gpus)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, env=env)
    if expected is None:
        assert result.returncode != 0 and "--gpus_per_node" in result.stderr
        result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, "--gpus_per_node=3", env=env)
        expected = "0,1,2"
    assert result.returncode == 0, result.stderr
    assert f"export JAX_LOCAL_DEVICE_IDS={expected}\n" in result.stdout


def test_slurm_dry_run_outside_allocation():
    result = run("gpu_slurm.sbatch", "--dry-run", *SLURM_ARGS, "--", "--config.num_epochs=300")
    assert result.returncode == 0, result.stderr
    lines = lines_of(result.stdout)
    sbatch = index_of(lines, lambda s: s.startswith("sbatch "))
    coord = index_of(lines, lambda s: s.startswith("export JAX_COORDINATOR_ADDRESS="))
    srun = index_of(lines, lambda s: s.startswith("srun "))
    assert sbatch < coord < srun
    assert "--dry-run" not in lines[sbatch] and "--config.num_epochs=300" in lines[sbatch]
    assert "scontrol show hostnames" in lines[coord]
    assert "--distributed" in lines[srun] and "--workdir=/shared/run" in lines[srun]


def test_slurm_real_run_outside_allocation_fails():
    result = run("gpu_slurm.sbatch", *SLURM_ARGS)
    assert result.returncode != 0 and "sbatch" in result.stderr


@pytest.mark.parametrize("dropped", ["--config", "--workdir"])
def test_slurm_missing_parameter(dropped, fake_slurm):
    env, _ = fake_slurm
    args = [a for a in SLURM_ARGS if not a.startswith(dropped + "=")]
    result = run("gpu_slurm.sbatch", "--dry-run", *args, env=env)
    assert result.returncode != 0 and dropped in result.stderr


# ---------------------------------------------------------------- local.sh

LOCAL_ARGS = ["--config=experiments/smoke.py", "--workdir=/tmp/detcon_w"]


def test_local_dry_run_single_process():
    result = run("local.sh", "--dry-run", *LOCAL_ARGS, "--config.num_steps=3")
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == [
        "python3 -m detcon_jax.train --config=experiments/smoke.py --workdir=/tmp/detcon_w "
        "--config.num_steps=3"
    ]


def test_local_dry_run_multi_process():
    result = run("local.sh", "--dry-run", *LOCAL_ARGS, "--processes=2",
                 "--devices_per_process=4", "--port=23456", "--", "--config.num_steps=3")
    assert result.returncode == 0, result.stderr
    lines = lines_of(result.stdout)
    assert len(lines) == 3 and lines[2] == "wait"
    for pid, line in enumerate(lines[:2]):
        assert line.endswith(" &")
        words = shlex.split(line[:-2])
        assert words[0] == "env"
        train = words.index("python3")
        assignments = dict(w.split("=", 1) for w in words[1:train])
        assert assignments == {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": "127.0.0.1:23456",
            "DETCON_NUM_PROCESSES": "2",
            "DETCON_PROCESS_ID": str(pid),
        }
        assert words[train:] == ["python3", "-m", "detcon_jax.train", *LOCAL_ARGS,
                                 "--distributed", "--config.num_steps=3"]


@pytest.mark.parametrize(
    "args, named",
    [([LOCAL_ARGS[1]], "--config"), ([LOCAL_ARGS[0]], "--workdir"),
     ([*LOCAL_ARGS, "--processes=0"], "--processes"),
     ([*LOCAL_ARGS, "--devices_per_process=x"], "--devices_per_process"),
     ([*LOCAL_ARGS, "--port=70000"], "--port")],
)
def test_local_bad_parameters(args, named):
    result = run("local.sh", "--dry-run", *args)
    assert result.returncode != 0 and named in result.stderr


def fake_python(tmp_path: pathlib.Path) -> pathlib.Path:
    """Records each process's distributed env and args; process FAIL_ID exits 3."""
    out = tmp_path / "out"
    out.mkdir()
    return write_executable(
        tmp_path / "python",
        "#!/usr/bin/env bash\n"
        'id="${DETCON_PROCESS_ID:-single}"\n'
        f'{{ echo "$JAX_COORDINATOR_ADDRESS $DETCON_NUM_PROCESSES $XLA_FLAGS"; '
        f'printf "%s\\n" "$@"; }} > {out}/$id\n'
        'echo "hello from $id"\n'
        '[ "$id" = "${FAIL_ID:-}" ] && exit 3\n'
        'exec sleep "${SLEEP:-0}"\n',
    )


def test_local_runs_processes_with_their_env(tmp_path):
    python = fake_python(tmp_path)
    result = run("local.sh", *LOCAL_ARGS, f"--python={python}", "--processes=3",
                 "--devices_per_process=2", "--port=23457", "--config.x=1",
                 env=clean_env(XLA_FLAGS="--xla_dump_to=/tmp/d"))
    assert result.returncode == 0, result.stderr
    assert "hello from 0" in result.stdout
    assert "[p1] hello from 1" in result.stdout and "[p2] hello from 2" in result.stdout
    for pid in range(3):
        header, *argv = (tmp_path / "out" / str(pid)).read_text().splitlines()
        assert header == ("127.0.0.1:23457 3 --xla_dump_to=/tmp/d "
                          "--xla_force_host_platform_device_count=2")
        assert argv == ["-m", "detcon_jax.train", *LOCAL_ARGS, "--distributed", "--config.x=1"]


def test_local_failure_stops_the_others(tmp_path):
    python = fake_python(tmp_path)
    start = time.monotonic()
    result = run("local.sh", *LOCAL_ARGS, f"--python={python}", "--processes=3",
                 env=clean_env(FAIL_ID="1", SLEEP="60"))
    assert result.returncode == 3
    assert "process 1 exited with status 3" in result.stderr
    assert time.monotonic() - start < 20, "the surviving processes were not stopped"


def scripted_python(tmp_path: pathlib.Path, scripts: dict[str, str]) -> pathlib.Path:
    """A stand-in python that runs ``scripts[DETCON_PROCESS_ID]`` (bash) in ``tmp_path``."""
    for pid, body in scripts.items():
        (tmp_path / f"process{pid}.sh").write_text(body)
    return write_executable(
        tmp_path / "python",
        f'#!/usr/bin/env bash\ncd {tmp_path}\nexec bash "process$DETCON_PROCESS_ID.sh"\n')


def test_local_waits_for_every_process_and_exits_with_the_first_failure(tmp_path):
    # Process 1 dies of SIGKILL; process 0 plays a JAX process whose peer is gone: it
    # ignores SIGTERM (JAX's preemption notifier takes it) and exits with status 4 by itself.
    # (It lets go of the output pipes, which would otherwise keep `run` waiting for it.)
    python = scripted_python(tmp_path, {
        "0": "exec >/dev/null 2>&1\ntrap 'echo TERM >> got' TERM\nsleep 3\n"
             "echo finished > done\nexit 4\n",
        "1": "sleep 0.5\nkill -KILL $$\n",
    })
    result = run("local.sh", *LOCAL_ARGS, f"--python={python}", "--processes=2")
    assert (tmp_path / "done").exists(), "local.sh returned while a process was still running"
    assert (tmp_path / "got").read_text() == "TERM\n"
    assert result.returncode == 137, result.stderr
    assert "process 1 exited with status 137; stopping the others" in result.stderr
    assert "process 0 exited with status 4\n" in result.stderr


def test_local_forwards_sigterm_and_waits_for_the_checkpoints(tmp_path):
    # SIGTERM to local.sh reaches every process (training: checkpoint, exit 0) and local.sh
    # returns when they have, with their status.
    body = ("trap 'sleep 1; echo saved > saved$DETCON_PROCESS_ID; exit 0' TERM\n"
            "touch started$DETCON_PROCESS_ID\nwhile :; do sleep 0.1; done\n")
    python = scripted_python(tmp_path, {"0": body, "1": body})
    proc = subprocess.Popen(["bash", str(LAUNCH / "local.sh"), *LOCAL_ARGS,
                             f"--python={python}", "--processes=2"],
                            cwd=REPO, env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"started{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, "processes did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert all((tmp_path / f"saved{i}").read_text() == "saved\n" for i in range(2))


def test_tpu_stop_kills_the_run(tmp_path):
    result = run("tpu_pod.sh", "stop", "--dry-run", *TPU_FLAGS)
    assert result.returncode == 0, result.stderr
    (stop_line,) = lines_of(result.stdout)
    assert "--worker=all" in stop_line
    # The train command starts the run with setsid, so it leads its own process group.
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (tmp_path / "detcon_train.pid").write_text(f"{sleeper.pid}\n")
        subprocess.run(["bash", "-c", remote_command(stop_line)], cwd=tmp_path,
                       env=clean_env(HOME=str(tmp_path)), check=True, timeout=30)
        assert sleeper.wait(timeout=10) != 0
    finally:
        sleeper.kill()
