#!/usr/bin/env bash
# Runs detcon_jax pretraining on a Cloud TPU VM slice: every host runs the same command.
set -euo pipefail

PROG="tpu_pod.sh"
# Keep in sync with the jax pin in setup.py (tests/test_launch.py checks this).
DEFAULT_JAX_VERSION="0.10.2"

usage() {
    cat <<'EOF'
Usage: launch/tpu_pod.sh [ACTION...] [FLAGS] [-- --config.KEY=VALUE ...]

Create a Cloud TPU VM slice (single host or pod), install detcon_jax on every
worker, start the same training command on all workers, follow the log, and
delete the slice. jax.distributed finds the other hosts by itself on TPU VMs.

Actions (run in the order given; default: none, so nothing happens by accident):
  create    gcloud compute tpus tpu-vm create
  install   copy the code to every worker (--repo: git clone there; otherwise a
            `git archive HEAD` of this checkout) and pip install it with jax[tpu]
  train     start training on all workers, detached (survives ssh disconnects);
            refuses to start while a previous run is alive on a worker
  logs      follow the training log of --log_worker until the process exits
  stop      kill the training process on every worker
  delete    gcloud compute tpus tpu-vm delete (also: --delete flag, run last)
  all       create install train logs

Flags (each also read from the environment variable in brackets; none has a
default tied to a person's project or bucket, so the required ones must be given):
  --project=ID          GCP project [DETCON_PROJECT]                   (all actions)
  --zone=ZONE           e.g. us-central2-b [DETCON_ZONE]               (all actions)
  --name=NAME           TPU VM name [DETCON_TPU_NAME]                  (all actions)
  --tpu_type=TYPE       accelerator type, e.g. v4-32, v5p-64, v5litepod-16, v6e-16
                        [DETCON_TPU_TYPE]                              (create)
  --version=VERSION     TPU software version [DETCON_TPU_VERSION]; default from
                        --tpu_type: v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5,
                        v5litepod -> v2-alpha-tpuv5-lite, v2/v3/v4 -> tpu-ubuntu2204-base
  --config=PATH         experiment config, relative to the repository root,
                        e.g. experiments/detcon_b_imagenet.py [DETCON_CONFIG] (train)
  --workdir=URI         checkpoints and logs; must be shared by all hosts, so a
                        gs:// bucket path on pods [DETCON_WORKDIR]     (train)
  --repo=URL            git URL to clone on the workers [DETCON_REPO]; default:
                        ship `git archive HEAD` of this checkout (commit first)
  --ref=REF             branch, tag or commit to check out with --repo [DETCON_REF]
  --python_version=V    Python for the workers' venv, made with uv (default 3.11;
                        the TPU images ship Python 3.10, too old for jax 0.10)
  --jax_version=V       jax[tpu] version (default: the version setup.py pins)
  --log_worker=N|all    worker whose log `logs` follows (default 0)
  --spot                create a Spot TPU
  --internal_ip         ssh/scp over internal IPs (when running inside the VPC)
  --delete              delete the slice after the other actions finish
  --dry-run             print the exact commands, run nothing
  -h, --help            this help

Everything after `--`, and any --config.KEY=VALUE flag, is passed to the
training command unchanged.

Files on each worker (in the ssh user's home): detcon_jax/ (code),
detcon_venv/ (Python env), detcon_train.log, detcon_train.pid, detcon_train.exit.

Example:
  launch/tpu_pod.sh all --delete --project=my-proj --zone=us-central2-b \
      --name=detcon-v4-32 --tpu_type=v4-32 \
      --config=experiments/detcon_b_imagenet.py --workdir=gs://my-bucket/detcon_b \
      -- --config.num_epochs=300
EOF
}

die() {
    echo "$PROG: error: $*" >&2
    exit 2
}

# Quotes each argument for bash only where needed, so dry-run output stays readable
# and can be pasted back into a shell; also used to build the remote command lines.
shell_quote() {
    local out=() arg q="'"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=("$arg")
        else
            out+=("$q${arg//$q/$q\\$q$q}$q")
        fi
    done
    printf '%s\n' "${out[*]}"
}

DRY_RUN=0
run() {
    if ((DRY_RUN)); then
        shell_quote "$@"
    else
        "$@"
    fi
}

PROJECT="${DETCON_PROJECT:-}"
ZONE="${DETCON_ZONE:-}"
NAME="${DETCON_TPU_NAME:-}"
TPU_TYPE="${DETCON_TPU_TYPE:-}"
VERSION="${DETCON_TPU_VERSION:-}"
CONFIG="${DETCON_CONFIG:-}"
WORKDIR="${DETCON_WORKDIR:-}"
REPO="${DETCON_REPO:-}"
REF="${DETCON_REF:-}"
PYTHON_VERSION="3.11"
JAX_VERSION="$DEFAULT_JAX_VERSION"
LOG_WORKER="0"
SPOT=0
INTERNAL_IP=0
DELETE_AT_END=0
ACTIONS=()
OVERRIDES=()

while (($#)); do
    arg="$1"
    shift
    case "$arg" in
        --) OVERRIDES+=("$@"); break ;;
        --config.*) OVERRIDES+=("$arg"); continue ;;
        create | install | train | logs | stop | delete) ACTIONS+=("$arg"); continue ;;
        all) ACTIONS+=(create install train logs); continue ;;
        -h | --help) usage; exit 0 ;;
        --dry-run | --dry_run) DRY_RUN=1; continue ;;
        --spot) SPOT=1; continue ;;
        --internal_ip | --internal-ip) INTERNAL_IP=1; continue ;;
        --delete) DELETE_AT_END=1; continue ;;
        --*=*) key="${arg%%=*}"; val="${arg#*=}" ;;
        --*)
            (($#)) || die "$arg needs a value"
            key="$arg"; val="$1"; shift ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
    case "$key" in
        --project) PROJECT="$val" ;;
        --zone) ZONE="$val" ;;
        --name) NAME="$val" ;;
        --tpu_type | --tpu-type | --accelerator_type | --accelerator-type) TPU_TYPE="$val" ;;
        --version | --runtime_version | --runtime-version) VERSION="$val" ;;
        --config) CONFIG="$val" ;;
        --workdir) WORKDIR="$val" ;;
        --repo) REPO="$val" ;;
        --ref) REF="$val" ;;
        --python_version) PYTHON_VERSION="$val" ;;
        --jax_version) JAX_VERSION="$val" ;;
        --log_worker) LOG_WORKER="$val" ;;
        *) die "unknown flag '$key' (see --help)" ;;
    esac
done

((DELETE_AT_END)) && ACTIONS+=(delete)
((${#ACTIONS[@]})) || die "no action given: use create, install, train, logs, stop, delete or all (see --help)"

has_action() {
    local a
    for a in "${ACTIONS[@]}"; do [[ "$a" == "$1" ]] && return 0; done
    return 1
}

require() {  # require VALUE FLAG ENVVAR
    [[ -n "$1" ]] || die "missing $2 (or set $3); see --help"
}

require "$PROJECT" --project DETCON_PROJECT
require "$ZONE" --zone DETCON_ZONE
require "$NAME" --name DETCON_TPU_NAME
if has_action create; then
    require "$TPU_TYPE" --tpu_type DETCON_TPU_TYPE
    if [[ -z "$VERSION" ]]; then
        case "$TPU_TYPE" in
            v6e-*) VERSION="v2-alpha-tpuv6e" ;;
            v5p-*) VERSION="v2-alpha-tpuv5" ;;
            v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
            v2-* | v3-* | v4-*) VERSION="tpu-ubuntu2204-base" ;;
            *) die "missing --version (or set DETCON_TPU_VERSION): no default for --tpu_type=$TPU_TYPE" ;;
        esac
    fi
fi
if has_action train; then
    require "$CONFIG" --config DETCON_CONFIG
    require "$WORKDIR" --workdir DETCON_WORKDIR
    if [[ "$WORKDIR" != gs://* ]]; then
        echo "$PROG: warning: --workdir=$WORKDIR is not a gs:// path; every host must see" \
            "the same directory for checkpoints to be usable" >&2
    fi
fi
[[ "$LOG_WORKER" =~ ^([0-9]+|all)$ ]] || die "--log_worker must be a worker index or 'all', got '$LOG_WORKER'"

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project="$PROJECT" --zone="$ZONE")
SSH_EXTRA=()
((INTERNAL_IP)) && SSH_EXTRA+=(--internal-ip)

ssh_workers() {  # ssh_workers WORKER REMOTE_COMMAND
    run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$1" ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} \
        --command="$2"
}

# Paths on the workers are relative to the ssh user's home directory.
REMOTE_DIR="detcon_jax"
VENV="detcon_venv"
LOG="detcon_train.log"
PIDFILE="detcon_train.pid"
EXITFILE="detcon_train.exit"

do_create() {
    local extra=()
    ((SPOT)) && extra+=(--spot)
    run "${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" \
        --accelerator-type="$TPU_TYPE" --version="$VERSION" ${extra[@]+"${extra[@]}"}
}

do_install() {
    local fetch
    if [[ -n "$REPO" ]]; then
        fetch="rm -rf $REMOTE_DIR && git clone $(shell_quote "$REPO") $REMOTE_DIR"
        if [[ -n "$REF" ]]; then
            fetch+=" && git -C $REMOTE_DIR checkout $(shell_quote "$REF")"
        fi
    else
        local root tarball
        root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
        tarball="${TMPDIR:-/tmp}/detcon_jax_src.tar.gz"
        if ((!DRY_RUN)) && [[ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]]; then
            echo "$PROG: warning: uncommitted changes in $root are not shipped (git archive HEAD)" >&2
        fi
        run git -C "$root" archive --format=tar.gz --output="$tarball" HEAD
        run "${GCLOUD_TPU[@]}" scp "$tarball" "$NAME:detcon_jax_src.tar.gz" "${WHERE[@]}" \
            --worker=all ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
        fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf detcon_jax_src.tar.gz -C $REMOTE_DIR"
    fi
    # The TPU images ship Python 3.10; uv provides the newer Python jax needs.
    local install
    install="set -e; $fetch"
    install+="; python3 -m pip install --user --quiet --upgrade uv"
    install+="; \$HOME/.local/bin/uv venv --seed --allow-existing --python $(shell_quote "$PYTHON_VERSION") $VENV"
    install+="; cd $REMOTE_DIR && ../$VENV/bin/python -m pip install -e . $(shell_quote "jax[tpu]==$JAX_VERSION")"
    ssh_workers all "$install"
}

do_train() {
    local py train inner
    py=("../$VENV/bin/python" -m detcon_jax.train --config="$CONFIG" --workdir="$WORKDIR"
        --distributed ${OVERRIDES[@]+"${OVERRIDES[@]}"})
    # Detached with setsid/nohup so the run outlives this ssh session; the wrapper
    # records the exit status for `logs`.
    inner="$(shell_quote "${py[@]}"); echo \$? > \$HOME/$EXITFILE"
    train="cd $REMOTE_DIR || exit 1"
    train+="; if [ -f \$HOME/$PIDFILE ] && kill -0 \$(cat \$HOME/$PIDFILE) 2>/dev/null;"
    train+=" then echo \"training already running on \$(hostname)\" >&2; exit 1; fi"
    train+="; rm -f \$HOME/$EXITFILE"
    train+="; setsid nohup bash -c $(shell_quote "$inner") > \$HOME/$LOG 2>&1 < /dev/null &"
    train+=" echo \$! > \$HOME/$PIDFILE; echo \"started training on \$(hostname), pid \$!\""
    ssh_workers all "$train"
}

do_logs() {
    local follow
    follow="[ -f $PIDFILE ] || { echo \"no training was started on \$(hostname)\" >&2; exit 1; }"
    follow+="; tail -n +1 -F --pid=\$(cat $PIDFILE) $LOG"
    follow+="; echo \"training on \$(hostname) exited with status \$(cat $EXITFILE 2>/dev/null || echo unknown)\""
    ssh_workers "$LOG_WORKER" "$follow"
}

do_stop() {
    ssh_workers all "if [ -f $PIDFILE ]; then kill -- -\$(cat $PIDFILE) 2>/dev/null || kill \$(cat $PIDFILE) 2>/dev/null; fi; true"
}

do_delete() {
    run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
}

for action in "${ACTIONS[@]}"; do
    ((DRY_RUN)) && echo "# $action"
    "do_$action"
done
